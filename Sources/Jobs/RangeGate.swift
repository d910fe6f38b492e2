#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock

/// Keeps a job's copy-on-read and clients' writes off the same bytes at the same time (QEMU's
/// serialising requests): clients' writes overlap each other freely; a range of the job waits for
/// overlapping writes to finish, and writes overlapping one of the job's ranges wait for it. The job
/// may hold several ranges at once, from several threads (a mirror's parallel copies).
final class RangeGate: WriteHook, @unchecked Sendable {
    private let lock = MonotonicCondition()
    private var writes: [Range<UInt64>] = []
    /// The job's ranges held now, each with the thread holding it: that thread's own writes into
    /// the node pass.
    private var held: [(range: Range<UInt64>, thread: pthread_t)] = []

    func around(
        _ node: BlockNode, _ request: HookedWrite, at offset: UInt64, length: UInt64, perform: () throws(BlockError) -> Void
    ) throws(BlockError) {
        let range = offset..<offset + max(length, 1)
        lock.lock()
        if held.contains(where: { pthread_equal($0.thread, pthread_self()) != 0 }) {
            lock.unlock()
            try perform()
            return
        }
        while held.contains(where: { $0.range.overlaps(range) }) { lock.wait() }
        writes.append(range)
        lock.unlock()
        defer {
            lock.lock()
            if let index = writes.firstIndex(of: range) { writes.remove(at: index) }
            lock.broadcast()
            lock.unlock()
        }
        try perform()
    }

    /// Runs `body` with `range` held against clients' writes.
    func withJobRange<T, E: Error>(_ range: Range<UInt64>, _ body: () throws(E) -> T) throws(E) -> T {
        lock.lock()
        while writes.contains(where: { $0.overlaps(range) }) || held.contains(where: { $0.range.overlaps(range) }) { lock.wait() }
        let thread = pthread_self()
        held.append((range, thread))
        lock.unlock()
        defer {
            lock.lock()
            if let index = held.firstIndex(where: { $0.range == range && pthread_equal($0.thread, thread) != 0 }) {
                held.remove(at: index)
            }
            lock.broadcast()
            lock.unlock()
        }
        return try body()
    }
}
