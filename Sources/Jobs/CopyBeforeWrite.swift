#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock

/// The backup's hook around the source's writes (QEMU's copy-before-write filter): before a
/// write changes a cluster whose old data the backup still needs, that data is copied to the
/// target. Clusters are claimed one at a time, so the job and clients never copy the same one
/// twice and a write never overtakes the copy of its cluster.
final class CopyBeforeWrite: WriteHook, @unchecked Sendable {
    /// Clusters whose data as of the job's start is not on the target yet.
    let pending: ChunkBitmap
    private let copier: RangeCopy
    private let lock = MonotonicCondition()
    /// Clusters being copied now; guarded by `lock`.
    private var busy = Set<Int>()
    /// The first failure of a copy made for a client's write; the job fails with it.
    private(set) var failure: BlockError?

    init(pending: ChunkBitmap, source: BlockNode, target: BlockNode, zeroesAsData: Bool = false) {
        self.pending = pending
        self.copier = RangeCopy(
            source: source, target: target, bufferSize: Int(pending.granularity), unmap: false, zeroesAsData: zeroesAsData)
    }

    func around(
        _ node: BlockNode, _ request: HookedWrite, at offset: UInt64, length: UInt64, perform: () throws(BlockError) -> Void
    ) throws(BlockError) {
        if length > 0 && pending.count > 0 {
            let first = Int(offset / pending.granularity)
            let last = Int((min(offset + length, pending.length) - 1) / pending.granularity)
            if first <= last {
                for chunk in first...last { preserve(chunk, copier: copier) }
            }
        }
        try perform()
    }

    /// Copies cluster `chunk` to the target unless it is there already or being copied (then waits
    /// for that copy). Returns the bytes copied here (0 when nothing was to do).
    @discardableResult
    func preserve(_ chunk: Int, copier: RangeCopy) -> UInt64 {
        lock.lock()
        while busy.contains(chunk) { lock.wait() }
        guard pending.contains(chunk) else {
            lock.unlock()
            return 0
        }
        busy.insert(chunk)
        lock.unlock()
        let range = pending.byteRange(chunk..<chunk + 1)
        var copied: UInt64 = 0
        do {
            try copier.copy(range)
            pending.clear(chunk)
            copied = range.upperBound - range.lowerBound
        } catch {
            lock.lock()
            if failure == nil { failure = error.error }
            lock.unlock()
            // The backup is broken; stop holding clients' writes for it.
            pending.clear(chunk)
        }
        lock.lock()
        busy.remove(chunk)
        lock.broadcast()
        lock.unlock()
        return copied
    }

    /// Copies to the target the chunks from `start` on (at most `limit`, stopping at one that is
    /// copied already or being copied) in one request: the job's background copy. Returns how many
    /// chunks it went past (at least 1), or the failure of the copy (its chunks stay to copy, for
    /// the job's error policy to retry).
    func preserveRun(from start: Int, limit: Int, copier: RangeCopy) -> Result<Int, CopyFailure> {
        lock.lock()
        while busy.contains(start) { lock.wait() }
        guard pending.contains(start) else {
            lock.unlock()
            return .success(1)
        }
        var end = start
        while end < start + limit && end < pending.chunks && pending.contains(end) && !busy.contains(end) {
            busy.insert(end)
            end += 1
        }
        lock.unlock()
        var result = Result<Int, CopyFailure>.success(end - start)
        do {
            try copier.copy(pending.byteRange(start..<end))
            for chunk in start..<end { pending.clear(chunk) }
        } catch {
            result = .failure(error)
        }
        lock.lock()
        for chunk in start..<end { busy.remove(chunk) }
        lock.broadcast()
        lock.unlock()
        return result
    }

    /// The failure of a client-triggered copy, if any.
    var copyFailure: BlockError? {
        lock.lock()
        defer { lock.unlock() }
        return failure
    }
}
