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
                                 onSourceError: arguments.onSourceError, onTargetError: arguments.onTargetError, reserved: reserved)
    }

    /// Checks and prepares a `drive-backup` (a transaction action): the target image is created now.
    func prepareDriveBackup(_ arguments: DriveBackup, reserved: Set<String>) throws(QAPIError) -> PreparedJob {
        let start = JobStart(
            id: arguments.jobId, device: arguments.device, speed: arguments.speed, autoFinalize: arguments.autoFinalize,
            autoDismiss: arguments.autoDismiss)
        let source = try jobNode(arguments.device)
        _ = try checkJobStart(start)
        try checkBackupSync(arguments.sync, bitmap: arguments.bitmap)
        let format = arguments.format ?? imageFormat(of: source)
        let backing = arguments.sync == .top ? backingOf(source) : nil
        if arguments.mode != .existing {
            try createJobImage(arguments.target, format: format, size: source.length, backing: backing)
        }
        let target = try openJobImage(arguments.target, format: format, nodeName: nil, followBacking: backing != nil)
        do throws(QAPIError) {
            var prepared = try prepareBackup(start, source: source, target: target, sync: arguments.sync,
                                             onSourceError: arguments.onSourceError, onTargetError: arguments.onTargetError,
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
        prepared.driver.detach()
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

    /// Refuses the sync modes that need a dirty bitmap, as QEMU words it.
    func checkBackupSync(_ sync: MirrorSyncMode, bitmap: String?) throws(QAPIError) {
        if sync == .incremental && bitmap == nil {
            throw .generic("must provide a valid bitmap name for 'incremental' sync mode")
        }
        if sync == .incremental { throw .generic("Sync mode 'incremental' not supported") }
    }

    private func startBackup(
        _ start: JobStart, source: BlockNode, target: BlockNode, sync: MirrorSyncMode,
        onSourceError: BlockdevOnError?, onTargetError: BlockdevOnError?
    ) throws(QAPIError) {
        let prepared = try prepareBackup(start, source: source, target: target, sync: sync,
                                         onSourceError: onSourceError, onTargetError: onTargetError, reserved: [])
        _ = try startJob(id: prepared.id, driver: prepared.driver, start: start)
    }

    private func prepareBackup(
        _ start: JobStart, source: BlockNode, target: BlockNode, sync: MirrorSyncMode,
        onSourceError: BlockdevOnError?, onTargetError: BlockdevOnError?, reserved: Set<String>
    ) throws(QAPIError) -> PreparedJob {
        // QEMU finds a node in use before it looks at the job id.
        try checkNotBusy([target, source])
        let id = try checkJobStart(start)
        if reserved.contains(id) { throw .generic("Job ID '\(id)' already in use") }
        try checkBackupSync(sync, bitmap: nil)
        guard source !== target else { throw .generic("Can't backup node into itself") }
        guard source.length == target.length else { throw .generic("Source and target image have different sizes") }
        guard !target.readOnly else { throw .generic("Target node '\(target.name)' is read-only") }
        let everything = [0..<source.length]
        let copy: [Range<UInt64>]
        switch sync {
        case .full: copy = everything
        case .none: copy = []
        default:
            do throws(BlockError) {
                copy = try BackupJob.allocatedRanges(of: source)
            } catch {
                throw .generic(error.message)
            }
        }
        let driver = BackupJob(
            source: source, target: target, copy: copy, preserve: sync == .top ? copy : everything,
            onSourceError: Daemon.policy(onSourceError), onTargetError: Daemon.policy(onTargetError))
        guard driver.attach() else {
            throw .generic("Node '\(source.name)' is busy: block device is in use by a block job")
        }
        return PreparedJob(id: id, driver: driver, start: start, opened: nil)
    }
}
