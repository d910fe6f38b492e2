#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock

/// Keeps a job's copy-on-read and clients' writes off the same bytes at the same time (QEMU's
/// serialising requests): clients' writes overlap each other freely; the job's range waits for
/// overlapping writes to finish, and writes overlapping the job's range wait for it.
final class RangeGate: WriteHook, @unchecked Sendable {
    private let lock = MonotonicCondition()
    private var writes: [Range<UInt64>] = []
    private var job: Range<UInt64>?
    /// The job's thread while it holds `job`: its own writes into the node pass.
    private var jobThread: pthread_t?

    func around(
        _ node: BlockNode, _ request: HookedWrite, at offset: UInt64, length: UInt64, perform: () throws(BlockError) -> Void
    ) throws(BlockError) {
        let range = offset..<offset + max(length, 1)
        lock.lock()
        if let jobThread, pthread_equal(jobThread, pthread_self()) != 0 {
            lock.unlock()
            try perform()
            return
        }
        while let job, job.overlaps(range) { lock.wait() }
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
        while writes.contains(where: { $0.overlaps(range) }) { lock.wait() }
        job = range
        jobThread = pthread_self()
        lock.unlock()
        defer {
            lock.lock()
            job = nil
            jobThread = nil
            lock.broadcast()
            lock.unlock()
        }
        return try body()
    }
}
