import BlockCore
import Dispatch

/// How much of the source a mirror copies first (`MirrorSyncMode`).
public enum MirrorSync: String, Sendable {
    /// Everything.
    case full
    /// What the source's top image holds itself.
    case top
    /// Nothing: only what clients write from now on.
    case none
}

/// How a mirror treats clients' writes to its source (`MirrorCopyMode`).
public enum MirrorWriteMode: String, Sendable {
    /// A write marks its range dirty; the job copies it later.
    case background
    /// Once the job runs, a write is repeated on the target before it completes: the job converges
    /// under any write load.
    case writeBlocking = "write-blocking"
}

/// `drive-mirror` / `blockdev-mirror`, and the active `block-commit`: copies the source onto the
/// target while clients write to the source, becomes ready when the two are in sync, and on
/// complete moves every device that shows the source onto the target (the pivot).
public final class MirrorJob: JobDriver, @unchecked Sendable {
    public let kind: JobKind
    public var completable: Bool { true }
    /// The node copied.
    public let source: BlockNode
    /// The node copied to.
    public let target: BlockNode
    let sync: MirrorSync
    let granularity: UInt64
    let bufferSize: Int
    let onSourceError: JobErrorPolicy
    let onTargetError: JobErrorPolicy
    let unmap: Bool
    let copyMode: MirrorWriteMode
    /// The devices to pivot: called at the pivot, filtered to those whose medium is the source.
    let devices: @Sendable () -> [BlockBackend]
    /// For an active commit: only chunks allocated above this depth of the source's chain are copied.
    let initialDirty: (@Sendable (ChunkBitmap) throws(BlockError) -> Void)?
    let hook: MirrorHook
    /// Called once the pivot is done (an active commit drops the images above its base).
    let afterPivot: (@Sendable () -> Void)?
    /// The pivot of a mirror with `replaces`: puts the target where that node was, instead of
    /// moving the source's devices.
    public var replacing: (@Sendable () -> Void)?
    /// The job's `mirror_top` node (`filter-node-name`), while it runs.
    public var filterNode: BlockNode?
    /// Takes the filter node out of the graph once the job ended.
    public var removeFilter: (@Sendable () -> Void)?

    /// A mirror of `source` onto `target` (same size, checked when the job runs).
    public init(
        kind: JobKind = .mirror, source: BlockNode, target: BlockNode, sync: MirrorSync, granularity: UInt64 = 65536,
        bufferSize: Int = 16 << 20, onSourceError: JobErrorPolicy = .report, onTargetError: JobErrorPolicy = .report,
        unmap: Bool = true, copyMode: MirrorWriteMode = .background, devices: @escaping @Sendable () -> [BlockBackend],
        initialDirty: (@Sendable (ChunkBitmap) throws(BlockError) -> Void)? = nil, afterPivot: (@Sendable () -> Void)? = nil
    ) {
        self.kind = kind
        self.source = source
        self.target = target
        self.sync = sync
        self.granularity = granularity
        self.bufferSize = bufferSize
        self.onSourceError = onSourceError
        self.onTargetError = onTargetError
        self.unmap = unmap
        self.copyMode = copyMode
        self.devices = devices
        self.initialDirty = initialDirty
        self.afterPivot = afterPivot
        self.hook = MirrorHook(dirty: ChunkBitmap(length: source.length, granularity: granularity))
    }

    /// Puts the hook on the source; false when another job's hook is there.
    public func attach() -> Bool { source.installWriteHook(hook) }

    /// Takes the hook off the source again (a job that could not be started).
    public func detachHook() { source.removeWriteHook(hook) }

    public func run(_ job: Job) throws(JobError) {
        guard source.length == target.length else { throw JobError("Source and target image have different sizes") }
        let dirty = hook.dirty
        hook.wake(job)
        do {
            if let initialDirty {
                try initialDirty(dirty)
            } else {
                switch sync {
                case .full: dirty.setAll()
                case .none: break
                case .top: try markAllocated(dirty)
                }
            }
        } catch {
            throw JobError(error.message)
        }
        if copyMode == .writeBlocking { hook.blockWrites(to: target) }
        // At most 4 MiB and the buffer size per copy: one request in flight, where QEMU keeps up
        // to 16 of at most 1 MiB.
        let chunkBytes = max(Int(granularity), min(bufferSize, 4 << 20))
        let copier = RangeCopy(source: source, target: target, bufferSize: chunkBytes, unmap: unmap)
        let chunksPerCopy = max(1, chunkBytes / Int(granularity))
        job.progress(current: 0, total: dirty.bytes)
        while job.pausePoint() {
            if let run = dirty.takeRun(limit: job.chunksPerRequest(chunkSize: granularity, most: chunksPerCopy)) {
                let range = dirty.byteRange(run)
                try copyWithPolicy(copier, range, run, job)
                job.addProgress(done: range.upperBound - range.lowerBound)
                let current = job.progressValues.current
                job.progress(current: current, total: current + dirty.bytes)
                job.throttle(range.upperBound - range.lowerBound)
                continue
            }
            job.setReady()
            if job.finishRequested {
                try finish(copier, job)
                return
            }
            job.idle(50_000_000)
        }
    }

    /// Copies a run, applying the error policies; a run that failed is dirty again.
    private func copyWithPolicy(_ copier: RangeCopy, _ range: Range<UInt64>, _ run: Range<Int>, _ job: Job) throws(JobError) {
        while true {
            do {
                if copyMode == .writeBlocking {
                    // Clients' writes repeat themselves on the target: none may land between this
                    // copy's read of the source and its write of the target.
                    try hook.ranges.withJobRange(range) { () throws(CopyFailure) in try copier.copy(range) }
                } else {
                    try copier.copy(range)
                }
                return
            } catch {
                let retry = try job.handleError(error.error, write: error.write, policy: error.write ? onTargetError : onSourceError)
                if !retry {
                    // Ignored: the run stays dirty and is copied again later, as QEMU does.
                    hook.dirty.set(range.lowerBound, range.upperBound - range.lowerBound)
                    return
                }
            }
        }
    }

    /// With clients' writes held back: copies what is still dirty, flushes the target, and makes
    /// the hook forward late writes (complete) or stand aside (a soft cancel).
    private func finish(_ copier: RangeCopy, _ job: Job) throws(JobError) {
        let dirty = hook.dirty
        let chunksPerCopy = max(1, copier.bufferSize / Int(granularity))
        hook.gate.close()
        defer { hook.gate.open() }
        while let run = dirty.takeRun(limit: chunksPerCopy) {
            do {
                try copier.copy(dirty.byteRange(run))
            } catch {
                dirty.set(dirty.byteRange(run).lowerBound, UInt64(run.count) * granularity)
                throw JobError(error.error.message)
            }
        }
        do {
            try target.flush()
        } catch {
            throw JobError(error.message)
        }
        hook.setMode(job.isSoftCancelled ? .passthrough : .forwarding(target))
    }

    /// Marks the chunks the source's top image holds itself.
    private func markAllocated(_ dirty: ChunkBitmap) throws(BlockError) {
        var position: UInt64 = 0
        while position < source.length {
            let extents = try source.blockStatus(at: position, length: source.length - position)
            guard let first = extents.first, first.length > 0 else { break }
            if first.depth == 0 && !first.hole { dirty.set(position, first.length) }
            position += first.length
        }
    }

    public func commit(_ job: Job) throws(JobError) {
        guard !job.isSoftCancelled else { return }
        if let replacing {
            replacing()
        } else {
            for device in devices() { _ = device.replaceMedium(source, with: target) }
        }
        afterPivot?()
    }

    public func abort(_ job: Job) {
        hook.setMode(.passthrough)
    }

    public func clean(_ job: Job) {
        removeFilter?()
        let hook = self.hook
        let source = self.source
        if case .forwarding = hook.currentMode {
            // Requests that looked the source up before the pivot may still be running: their
            // writes are repeated on the target for a moment more.
            DispatchQueue.global().asyncAfter(deadline: .now() + 1) {
                hook.setMode(.passthrough)
                source.removeWriteHook(hook)
            }
        } else {
            source.removeWriteHook(hook)
        }
    }
}

extension MirrorHook {
    var currentMode: Mode { modeNow() }
}
