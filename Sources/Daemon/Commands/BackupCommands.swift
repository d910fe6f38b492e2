import BlockCore
import Jobs
import QAPI

extension Daemon {
    /// `blockdev-backup`, `drive-backup`.
    func registerBackupCommands(on table: QMPCommandTable) {
        table.register(BlockdevBackupCommand.self) { [unowned self] arguments throws(QAPIError) in try blockdevBackup(arguments) }
        table.register(DriveBackupCommand.self) { [unowned self] arguments throws(QAPIError) in try driveBackup(arguments) }
    }

    /// `blockdev-backup`: a point-in-time copy of a node onto an existing node.
    func blockdevBackup(_ arguments: BlockdevBackup) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            let start = JobStart(
                id: arguments.jobId, device: arguments.device, speed: arguments.speed, autoFinalize: arguments.autoFinalize,
                autoDismiss: arguments.autoDismiss)
            let source = try jobNode(arguments.device)
            let target = try jobNode(arguments.target)
            try startBackup(start, source: source, target: target, sync: arguments.sync,
                            bitmap: BackupBitmap(name: arguments.bitmap, mode: arguments.bitmapMode),
                            onSourceError: arguments.onSourceError, onTargetError: arguments.onTargetError)
            return QAPIEmpty()
        }
    }

    /// A backup job ready to start: copy-before-write is on, the job not started yet (a transaction
    /// starts its jobs once every action was prepared).
    struct PreparedJob {
        var id: String
        var driver: BackupJob
        var start: JobStart
        /// A node the preparation opened (drive-backup's target), removed on abort.
        var opened: BlockNode?
    }

    /// Checks and prepares a `blockdev-backup` (a transaction action).
    func prepareBlockdevBackup(_ arguments: BlockdevBackup, reserved: Set<String>) throws(QAPIError) -> PreparedJob {
        let start = JobStart(
            id: arguments.jobId, device: arguments.device, speed: arguments.speed, autoFinalize: arguments.autoFinalize,
            autoDismiss: arguments.autoDismiss)
        let source = try jobNode(arguments.device)
        let target = try jobNode(arguments.target)
        return try prepareBackup(start, source: source, target: target, sync: arguments.sync,
                                 bitmap: BackupBitmap(name: arguments.bitmap, mode: arguments.bitmapMode),
                                 onSourceError: arguments.onSourceError, onTargetError: arguments.onTargetError, reserved: reserved)
    }

    /// Checks and prepares a `drive-backup` (a transaction action): the target image is created now.
    func prepareDriveBackup(_ arguments: DriveBackup, reserved: Set<String>) throws(QAPIError) -> PreparedJob {
        let start = JobStart(
            id: arguments.jobId, device: arguments.device, speed: arguments.speed, autoFinalize: arguments.autoFinalize,
            autoDismiss: arguments.autoDismiss)
        let source = try jobNode(arguments.device)
        _ = try checkJobStart(start)
        _ = try checkBackupSync(arguments.sync, bitmap: BackupBitmap(name: arguments.bitmap, mode: arguments.bitmapMode), of: source)
        let format = arguments.format ?? imageFormat(of: source)
        let backing = arguments.sync == .top ? backingOf(source) : nil
        if arguments.mode != .existing {
            try createJobImage(arguments.target, format: format, size: source.length, backing: backing)
        }
        let target = try openJobImage(arguments.target, format: format, nodeName: nil, followBacking: backing != nil)
        do throws(QAPIError) {
            var prepared = try prepareBackup(start, source: source, target: target, sync: arguments.sync,
                                             bitmap: BackupBitmap(name: arguments.bitmap, mode: arguments.bitmapMode), onSourceError: arguments.onSourceError, onTargetError: arguments.onTargetError,
                                             reserved: reserved)
            prepared.opened = target
            return prepared
        } catch {
            try? graph.remove(target.name)
            throw error
        }
    }

    /// Undoes a prepared backup that will not start.
    func abortPrepared(_ prepared: PreparedJob) {
        prepared.driver.abandon()
        if let opened = prepared.opened { try? graph.remove(opened.name) }
    }

    /// `drive-backup`: creates (or opens, mode=existing) the target image, then backs up.
    func driveBackup(_ arguments: DriveBackup) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            let prepared = try prepareDriveBackup(arguments, reserved: [])
            do throws(QAPIError) {
                _ = try startJob(id: prepared.id, driver: prepared.driver, start: prepared.start)
            } catch {
                abortPrepared(prepared)
                throw error
            }
            return QAPIEmpty()
        }
    }

    /// The dirty bitmap of an incremental backup, as the command names it.
    struct BackupBitmap {
        var name: String?
        var mode: BitmapSyncMode?
    }

    /// Checks a backup's sync mode against its bitmap as QEMU 7.2's `do_backup_common` does, in its
    /// order and words; returns the bitmap and what it keeps when the job ends (nil: no bitmap).
    func checkBackupSync(
        _ sync: MirrorSyncMode, bitmap: BackupBitmap, of source: BlockNode
    ) throws(QAPIError) -> (bitmap: DirtyBitmap, mode: DirtyBitmapSet.JobBitmapMode)? {
        if (sync == .bitmap || sync == .incremental) && bitmap.name == nil {
            throw .generic("must provide a valid bitmap name for '\(sync.rawValue)' sync mode")
        }
        var mode = bitmap.mode
        if sync == .incremental {
            if let mode, mode != .onSuccess {
                throw .generic("Bitmap sync mode must be 'on-success' when using sync mode 'incremental'")
            }
            mode = .onSuccess
        }
        guard let name = bitmap.name else {
            if mode != nil { throw .generic("Cannot specify bitmap sync mode without a bitmap") }
            return nil
        }
        guard let found = source.dirtyBitmaps.find(name) else { throw .generic("Bitmap '\(name)' could not be found") }
        guard let mode else { throw .generic("Bitmap sync mode must be given when providing a bitmap") }
        do throws(DirtyBitmapError) {
            try source.dirtyBitmaps.check(found, allow: [.readOnly])
        } catch {
            throw .generic(error.message)
        }
        if sync == .none {
            throw .generic("sync mode 'none' does not produce meaningful bitmap outputs")
        }
        if mode == .never && sync != .bitmap && sync != .incremental {
            throw .generic("Bitmap sync mode 'never' has no meaningful effect when combined with sync mode '\(sync.rawValue)'")
        }
        let jobMode: DirtyBitmapSet.JobBitmapMode
        switch mode {
        case .onSuccess: jobMode = .onSuccess
        case .never: jobMode = .never
        case .always: jobMode = .always
        }
        return (found, jobMode)
    }

    /// Freezes the bitmap of a backup: with sync "bitmap" its dirty parts are what the job copies,
    /// and writes from now on are recorded apart until the job ends (`DirtyBitmapSet.freeze`).
    func freezeBackupBitmap(_ bitmap: DirtyBitmap, mode: DirtyBitmapSet.JobBitmapMode, of source: BlockNode) throws(QAPIError) {
        do throws(DirtyBitmapError) {
            // A bitmap the job will change must be writable (QEMU's BDRV_BITMAP_DEFAULT check).
            if mode != .never { try source.dirtyBitmaps.check(bitmap, allow: []) }
            try source.dirtyBitmaps.freeze(bitmap, allow: mode == .never ? [.readOnly] : [])
        } catch {
            throw .generic(error.message)
        }
    }

    private func startBackup(
        _ start: JobStart, source: BlockNode, target: BlockNode, sync: MirrorSyncMode, bitmap: BackupBitmap,
        onSourceError: BlockdevOnError?, onTargetError: BlockdevOnError?
    ) throws(QAPIError) {
        let prepared = try prepareBackup(start, source: source, target: target, sync: sync, bitmap: bitmap,
                                         onSourceError: onSourceError, onTargetError: onTargetError, reserved: [])
        do throws(QAPIError) {
            _ = try startJob(id: prepared.id, driver: prepared.driver, start: start)
        } catch {
            abortPrepared(prepared)
            throw error
        }
    }

    private func prepareBackup(
        _ start: JobStart, source: BlockNode, target: BlockNode, sync: MirrorSyncMode, bitmap: BackupBitmap,
        onSourceError: BlockdevOnError?, onTargetError: BlockdevOnError?, reserved: Set<String>
    ) throws(QAPIError) -> PreparedJob {
        // QEMU finds a node in use before it looks at the job id.
        try checkNotBusy([target, source])
        let id = try checkJobStart(start)
        if reserved.contains(id) { throw .generic("Job ID '\(id)' already in use") }
        let syncBitmap = try checkBackupSync(sync, bitmap: bitmap, of: source)
        guard source !== target else { throw .generic("Can't backup node into itself") }
        guard source.length == target.length else { throw .generic("Source and target image have different sizes") }
        guard !target.readOnly else { throw .generic("Target node '\(target.name)' is read-only") }
        let everything = [0..<source.length]
        let copy: [Range<UInt64>]
        switch sync {
        case .full: copy = everything
        case .none: copy = []
        case .incremental, .bitmap:
            copy = (syncBitmap?.bitmap.dirtyRanges() ?? []).map { $0.offset..<min($0.offset + $0.length, source.length) }
        default:
            do throws(BlockError) {
                copy = try BackupJob.allocatedRanges(of: source)
            } catch {
                throw .generic(error.message)
            }
        }
        if let syncBitmap { try freezeBackupBitmap(syncBitmap.bitmap, mode: syncBitmap.mode, of: source) }
        let frozen = syncBitmap?.bitmap
        let bitmaps = source.dirtyBitmaps
        var finished: (@Sendable (Bool) -> Void)?
        let jobBox = BackupJobBox()
        if let syncBitmap {
            let granularity = syncBitmap.bitmap.granularity
            finished = { succeeded in
                var remaining: DirtyBitmap?
                if !succeeded && syncBitmap.mode == .always, let job = jobBox.job {
                    let uncopied = DirtyBitmap(name: "", granularity: granularity, size: source.length)
                    for range in job.uncopiedRanges { uncopied.mark(range.lowerBound, range.upperBound - range.lowerBound) }
                    remaining = uncopied
                }
                bitmaps.finishJob(syncBitmap.bitmap, mode: syncBitmap.mode, succeeded: succeeded, remaining: remaining)
            }
        }
        let preserve = sync == .top || sync == .incremental || sync == .bitmap ? copy : everything
        let driver = BackupJob(
            source: source, target: target, copy: copy, preserve: preserve,
            onSourceError: Daemon.policy(onSourceError), onTargetError: Daemon.policy(onTargetError), finished: finished)
        jobBox.job = driver
        guard driver.attach() else {
            if let frozen { bitmaps.thaw(frozen, clearFrozenBits: false) }
            throw .generic("Node '\(source.name)' is busy: block device is in use by a block job")
        }
        return PreparedJob(id: id, driver: driver, start: start, opened: nil)
    }
}

/// The backup job a bitmap's end-of-job closure reads its uncopied ranges from (set once the job
/// exists, before it starts).
private final class BackupJobBox: @unchecked Sendable {
    weak var job: BackupJob?
}
