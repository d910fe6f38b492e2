import BlockCore
import Dispatch
import Synchronization

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
        // Copies of at most 1 MiB (QEMU's largest mirror request; a buffer that stays in the CPU's
        // cache), `lanes` of them at once within the buffer size.
        let chunkBytes = max(Int(granularity), min(bufferSize, 1 << 20))
        let lanes = max(1, min(MirrorJob.lanes, bufferSize / chunkBytes))
        let copiers = (0..<lanes).map { _ in RangeCopy(source: source, target: target, bufferSize: chunkBytes, unmap: unmap) }
        let copier = copiers[0]
        let chunksPerCopy = max(1, chunkBytes / Int(granularity))
        job.progress(current: 0, total: dirty.bytes)
        while job.pausePoint() {
            let most = job.chunksPerRequest(chunkSize: granularity, most: chunksPerCopy)
            // A speed-limited job copies one small run at a time, so that it sleeps often.
            let width = most < chunksPerCopy ? 1 : lanes
            var runs: [Range<Int>] = []
            while runs.count < width, let run = dirty.takeRun(limit: most) { runs.append(run) }
            if !runs.isEmpty {
                try copyRuns(runs, copiers, job)
                let bytes = runs.reduce(UInt64(0)) { $0 + dirty.byteRange($1).upperBound - dirty.byteRange($1).lowerBound }
                job.addProgress(done: bytes)
                let current = job.progressValues.current
                job.progress(current: current, total: current + dirty.bytes)
                job.throttle(bytes)
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

    /// Copies `range` once.
    private func copyOnce(_ copier: RangeCopy, _ range: Range<UInt64>) throws(CopyFailure) {
        if copyMode == .writeBlocking {
            // Clients' writes repeat themselves on the target: none may land between this copy's
            // read of the source and its write of the target.
            try hook.ranges.withJobRange(range) { () throws(CopyFailure) in try copier.copy(range) }
        } else {
            try copier.copy(range)
        }
    }

    /// How many copies a mirror has in flight.
    static let lanes = 2

    /// Copies runs at once, one per copier; failures then go through the error policies in turn.
    private func copyRuns(_ runs: [Range<Int>], _ copiers: [RangeCopy], _ job: Job) throws(JobError) {
        let dirty = hook.dirty
        guard runs.count > 1 else {
            try copyWithPolicy(copiers[0], dirty.byteRange(runs[0]), runs[0], job)
            return
        }
        let failures = Mutex<[Int: CopyFailure]>([:])
        DispatchQueue.concurrentPerform(iterations: runs.count) { index in
            do throws(CopyFailure) {
                try copyOnce(copiers[index], dirty.byteRange(runs[index]))
            } catch {
                failures.withLock { $0[index] = error }
            }
        }
        for (index, failure) in failures.withLock({ $0 }).sorted(by: { $0.key < $1.key }) {
            try copyWithPolicy(copiers[0], dirty.byteRange(runs[index]), runs[index], job, failed: failure)
        }
    }

    /// Copies a run, applying the error policies (`failed`: the copy failed already once); a run
    /// that failed is dirty again.
    private func copyWithPolicy(
        _ copier: RangeCopy, _ range: Range<UInt64>, _ run: Range<Int>, _ job: Job, failed: CopyFailure? = nil
    ) throws(JobError) {
        var pending = failed
        while true {
            if let error = pending {
                let retry = try job.handleError(error.error, write: error.write, policy: error.write ? onTargetError : onSourceError)
                if !retry {
                    // Ignored: the run stays dirty and is copied again later, as QEMU does.
                    hook.dirty.set(range.lowerBound, range.upperBound - range.lowerBound)
                    return
                }
                pending = nil
            }
            do {
                try copyOnce(copier, range)
                return
            } catch {
                pending = error
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
