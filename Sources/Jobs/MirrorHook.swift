#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock

/// The mirror's hook around the source's writes (QEMU's mirror-top filter): while the job
/// copies, every written range is marked dirty after the write; once the job has pivoted, writes
/// that still reach the source (requests that were in flight) are repeated on the target.
final class MirrorHook: WriteHook, @unchecked Sendable {
    enum Mode { case tracking, forwarding(BlockNode), passthrough }

    let dirty: ChunkBitmap
    let gate = WriteGate()
    private let lock = MonotonicCondition()
    /// Guarded by `lock`.
    private var mode = Mode.tracking
    /// The job woken when a write makes something dirty; guarded by `lock`.
    private weak var job: Job?

    init(dirty: ChunkBitmap) { self.dirty = dirty }

    func setMode(_ new: Mode) {
        lock.lock()
        mode = new
        lock.unlock()
    }

    func modeNow() -> Mode {
        lock.lock()
        defer { lock.unlock() }
        return mode
    }

    /// Wakes `job` after every write that made chunks dirty.
    func wake(_ job: Job) {
        lock.lock()
        self.job = job
        lock.unlock()
    }

    func around(
        _ node: BlockNode, _ request: HookedWrite, at offset: UInt64, length: UInt64, perform: () throws(BlockError) -> Void
    ) throws(BlockError) {
        gate.enter()
        defer { gate.leave() }
        try perform()
        lock.lock()
        let current = mode
        let waiting = job
        lock.unlock()
        switch current {
        case .tracking:
            dirty.set(offset, length)
            waiting?.wake()
        case .forwarding(let target):
            switch request {
            case .data(let bytes): try target.write(bytes, at: offset, fua: false)
            case .zeroes: try target.writeZeroes(at: offset, length: length, flags: [])
            case .discard: try target.discard(at: offset, length: length)
            }
        case .passthrough:
            break
        }
    }
}
