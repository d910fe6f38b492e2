import BlockCore

/// `drive-backup` / `blockdev-backup`: a point-in-time copy of the source. From the moment the
/// job is attached, a client's write to a cluster still to be copied first copies that
/// cluster's old data (copy-before-write); the job copies the rest in the background.
///
/// What is copied is given as byte ranges (`copy`: everything for sync=full, the top image's
/// allocation for sync=top, nothing for sync=none; a dirty bitmap's ranges for an incremental
/// backup), and what copy-before-write preserves as `preserve` (a superset of `copy`).
public final class BackupJob: JobDriver, @unchecked Sendable {
    public let kind = JobKind.backup
    /// The node backed up.
    public let source: BlockNode
    /// The node written to.
    public let target: BlockNode
    let copyRanges: [Range<UInt64>]
    let onSourceError: JobErrorPolicy
    let onTargetError: JobErrorPolicy
    let hook: CopyBeforeWrite
    let clusterSize: UInt64
    /// The chunks the job copies itself.
    let toCopy: ChunkBitmap
    /// Told whether the job succeeded, once it ends (an incremental backup's bitmap keeps or drops its bits).
    let finished: (@Sendable (_ succeeded: Bool) -> Void)?

    /// A backup of `source` onto `target` (the same size) of the ranges `copy`, preserving the old
    /// data of `preserve` against clients' writes until the job ends.
    public init(
        source: BlockNode, target: BlockNode, copy: [Range<UInt64>], preserve: [Range<UInt64>], clusterSize: UInt64 = 65536,
        onSourceError: JobErrorPolicy = .report, onTargetError: JobErrorPolicy = .report,
        finished: (@Sendable (_ succeeded: Bool) -> Void)? = nil
    ) {
        self.finished = finished
        self.source = source
        self.target = target
        self.copyRanges = copy
        self.onSourceError = onSourceError
        self.onTargetError = onTargetError
        self.clusterSize = clusterSize
        let pending = ChunkBitmap(length: source.length, granularity: clusterSize)
        for range in preserve { pending.set(range.lowerBound, range.upperBound - range.lowerBound) }
        self.hook = CopyBeforeWrite(pending: pending, source: source, target: target, zeroesAsData: finished != nil)
        self.toCopy = ChunkBitmap(length: source.length, granularity: clusterSize)
        for range in copy { toCopy.set(range.lowerBound, range.upperBound - range.lowerBound) }
    }

    /// Puts copy-before-write on the source: from now on the backup is of the data as it is now.
    /// False when another job's hook is there.
    public func attach() -> Bool { source.installWriteHook(hook) }

    /// The ranges sync=top copies: what the source's top image holds itself.
    public static func allocatedRanges(of node: BlockNode) throws(BlockError) -> [Range<UInt64>] {
        var ranges: [Range<UInt64>] = []
        var position: UInt64 = 0
        while position < node.length {
            let extents = try node.blockStatus(at: position, length: node.length - position)
            guard let first = extents.first, first.length > 0 else { break }
            if first.depth == 0 && !first.hole { ranges.append(position..<position + first.length) }
            position += first.length
        }
        return ranges
    }

    public func run(_ job: Job) throws(JobError) {
        let copier = RangeCopy(source: source, target: target, bufferSize: max(Int(clusterSize), 1 << 20), unmap: false,
                               zeroesAsData: finished != nil)
        let total = toCopy.bytes
        job.progress(current: 0, total: total)
        var done: UInt64 = 0
        // An empty copy set (sync=none) keeps copy-before-write on until the job is cancelled.
        if total == 0 && copyRanges.isEmpty {
            while job.pausePoint() {
                if let failure = hook.copyFailure { throw JobError(failure.message) }
                job.idle(100_000_000)
            }
            return
        }
        let chunksPerCopy = max(1, Int((1 << 20) / clusterSize))
        while job.pausePoint() {
            if let failure = hook.copyFailure { throw JobError(failure.message) }
            guard let run = toCopy.takeRun(limit: job.chunksPerRequest(chunkSize: clusterSize, most: chunksPerCopy)) else { break }
            var chunk = run.lowerBound
            while chunk < run.upperBound {
                switch hook.preserveRun(from: chunk, limit: run.upperBound - chunk, copier: copier) {
                case .success(let count):
                    chunk += count
                case .failure(let failure):
                    // QEMU's backup retries a failed copy unless the policy reports it.
                    let policy = failure.write ? onTargetError : onSourceError
                    _ = try job.handleError(failure.error, write: failure.write, policy: policy)
                    guard job.pausePoint() else { return }
                }
            }
            if let failure = hook.copyFailure {
                _ = try job.handleError(failure, write: true, policy: .report)
            }
            let size = toCopy.byteRange(run).upperBound - toCopy.byteRange(run).lowerBound
            done += size
            job.progress(current: done, total: total)
            job.throttle(size)
        }
        if job.isCancelled { return }
        do {
            try target.flush()
        } catch {
            throw JobError(error.message)
        }
    }

    public func commit(_ job: Job) throws(JobError) {
        finished?(true)
    }

    public func abort(_ job: Job) {
        finished?(false)
    }

    public func clean(_ job: Job) {
        detach()
    }

    /// Gives up a job that was prepared but never started: copy-before-write comes off and the
    /// bitmap of an incremental backup keeps its bits.
    public func abandon() {
        finished?(false)
        detach()
    }

    /// The ranges whose point-in-time data is not on the target (yet): what a failed job with
    /// bitmap-mode `always` leaves dirty in its bitmap.
    public var uncopiedRanges: [Range<UInt64>] {
        let pending = hook.pending
        var ranges: [Range<UInt64>] = []
        var chunk = 0
        while chunk < pending.chunks {
            guard pending.contains(chunk) else {
                chunk += 1
                continue
            }
            var end = chunk + 1
            while end < pending.chunks && pending.contains(end) { end += 1 }
            ranges.append(pending.byteRange(chunk..<end))
            chunk = end
        }
        return ranges
    }

    /// Takes copy-before-write off the source (a job that ends, or one that never started).
    public func detach() {
        source.removeWriteHook(hook)
    }
}
