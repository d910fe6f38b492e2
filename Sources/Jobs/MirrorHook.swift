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
    /// Keeps the job's copies and clients' repeated writes off the same bytes (write-blocking mode).
    let ranges = RangeGate()
    private let lock = MonotonicCondition()
    /// Guarded by `lock`.
    private var mode = Mode.tracking
    /// The job woken when a write makes something dirty; guarded by `lock`.
    private weak var job: Job?
    /// Write-blocking mode once the job runs: the target every write is repeated on; guarded by `lock`.
    private var blockingTarget: BlockNode?

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

    /// From now on every write is repeated on `target` before it completes (QEMU's active mirror),
    /// instead of only marking its range dirty.
    func blockWrites(to target: BlockNode) {
        lock.lock()
        blockingTarget = target
        lock.unlock()
    }

    func around(
        _ node: BlockNode, _ request: HookedWrite, at offset: UInt64, length: UInt64, perform: () throws(BlockError) -> Void
    ) throws(BlockError) {
        gate.enter()
        defer { gate.leave() }
        lock.lock()
        let blocking = blockingTarget
        lock.unlock()
        if let blocking, case .tracking = modeNow() {
            try ranges.around(node, request, at: offset, length: length) { () throws(BlockError) in
                try perform()
                do {
                    try MirrorHook.repeatWrite(request, on: blocking, at: offset, length: length)
                } catch {
                    // The client's write is done; the job copies the range again later.
                    markDirty(offset, length)
                }
            }
            return
        }
        try perform()
        lock.lock()
        let current = mode
        lock.unlock()
        switch current {
        case .tracking:
            markDirty(offset, length)
        case .forwarding(let target):
            try MirrorHook.repeatWrite(request, on: target, at: offset, length: length)
        case .passthrough:
            break
        }
    }

    private func markDirty(_ offset: UInt64, _ length: UInt64) {
        dirty.set(offset, length)
        lock.lock()
        let waiting = job
        lock.unlock()
        waiting?.wake()
    }

    /// Repeats a client's request on `target`.
    static func repeatWrite(_ request: HookedWrite, on target: BlockNode, at offset: UInt64, length: UInt64) throws(BlockError) {
        switch request {
        case .data(let bytes): try target.write(bytes, at: offset, fua: false)
        case .zeroes: try target.writeZeroes(at: offset, length: length, flags: [])
        case .discard: try target.discard(at: offset, length: length)
        }
    }
}
