import BlockCore
import Jobs
import QAPI

extension Daemon {
    /// `blockdev-mirror`, `drive-mirror`.
    func registerMirrorCommands(on table: QMPCommandTable) {
        table.register(BlockdevMirrorCommand.self) { [unowned self] arguments throws(QAPIError) in try blockdevMirror(arguments) }
        table.register(DriveMirrorCommand.self) { [unowned self] arguments throws(QAPIError) in try driveMirror(arguments) }
    }

    /// The mirror settings both commands share.
    struct MirrorSettings {
        var sync: MirrorSyncMode
        var granularity: UInt32?
        var bufSize: Int64?
        var onSourceError: BlockdevOnError?
        var onTargetError: BlockdevOnError?
        var unmap: Bool?
    }

    /// `blockdev-mirror`: mirrors a node onto an existing node.
    func blockdevMirror(_ arguments: BlockdevMirrorArguments) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            let start = JobStart(
                id: arguments.jobId, device: arguments.device, speed: arguments.speed, autoFinalize: arguments.autoFinalize,
                autoDismiss: arguments.autoDismiss)
            let source = try jobNode(arguments.device)
            let target = try jobNode(arguments.target)
            let settings = MirrorSettings(
                sync: arguments.sync, granularity: arguments.granularity, bufSize: arguments.bufSize,
                onSourceError: arguments.onSourceError, onTargetError: arguments.onTargetError, unmap: nil)
            try startMirror(start, source: source, target: target, settings: settings)
            return QAPIEmpty()
        }
    }

    /// `drive-mirror`: creates (or, with mode=existing, opens) the target image, then mirrors.
    func driveMirror(_ arguments: DriveMirrorArguments) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            let start = JobStart(
                id: arguments.jobId, device: arguments.device, speed: arguments.speed, autoFinalize: arguments.autoFinalize,
                autoDismiss: arguments.autoDismiss)
            let source = try jobNode(arguments.device)
            _ = try checkJobStart(start)
            let settings = MirrorSettings(
                sync: arguments.sync, granularity: arguments.granularity, bufSize: arguments.bufSize,
                onSourceError: arguments.onSourceError, onTargetError: arguments.onTargetError, unmap: arguments.unmap)
            try checkMirrorSettings(settings)
            let format = arguments.format ?? imageFormat(of: source)
            let backing = arguments.sync == .top ? backingOf(source) : nil
            if arguments.mode != .existing {
                try createJobImage(arguments.target, format: format, size: source.length, backing: backing)
            }
            let target = try openJobImage(
                arguments.target, format: format, nodeName: arguments.nodeName, followBacking: backing != nil)
            do throws(QAPIError) {
                try startMirror(start, source: source, target: target, settings: settings)
            } catch {
                try? graph.remove(target.name)
                throw error
            }
            return QAPIEmpty()
        }
    }

    /// Checks granularity and buffer size with QEMU's wording.
    private func checkMirrorSettings(_ settings: MirrorSettings) throws(QAPIError) {
        if let granularity = settings.granularity {
            guard granularity >= 512, granularity <= 64 << 20 else {
                throw .generic("Parameter 'granularity' expects a value in range [512B, 64MB]")
            }
            guard granularity & (granularity - 1) == 0 else {
                throw .generic("Parameter 'granularity' expects a power of 2")
            }
        }
        if let size = settings.bufSize, size < 0 {
            throw .generic("Parameter 'buf-size' expects a non-negative value")
        }
        if settings.sync == .incremental || settings.sync == .bitmap {
            throw .generic("Sync mode '\(settings.sync.rawValue)' not supported")
        }
    }

    private func startMirror(_ start: JobStart, source: BlockNode, target: BlockNode, settings: MirrorSettings) throws(QAPIError) {
        let id = try checkJobStart(start)
        try checkMirrorSettings(settings)
        guard source !== target else { throw .generic("Can't mirror node into itself") }
        guard graph.parents(of: source).isEmpty, !source.hasWriteHook else { throw .generic("Need a root block node") }
        try checkNotBusy([target, source])
        guard !target.readOnly else { throw .generic("Target node '\(target.name)' is read-only") }
        let sync: MirrorSync = settings.sync == .full ? .full : settings.sync == .top ? .top : .none
        let driver = MirrorJob(
            source: source, target: target, sync: sync, granularity: UInt64(settings.granularity ?? 65536),
            bufferSize: Int(settings.bufSize.map { $0 > 0 ? $0 : 16 << 20 } ?? 16 << 20),
            onSourceError: Daemon.policy(settings.onSourceError), onTargetError: Daemon.policy(settings.onTargetError),
            unmap: settings.unmap ?? true, devices: { [weak self] in self?.allBackends() ?? [] })
        guard driver.attach() else {
            throw .generic("Node '\(source.name)' is busy: block device is in use by a block job")
        }
        _ = try startJob(id: id, driver: driver, start: start)
    }

    /// A job error policy from its QAPI value (report when absent).
    static func policy(_ value: BlockdevOnError?) -> JobErrorPolicy {
        JobErrorPolicy(rawValue: value?.rawValue ?? "report") ?? .report
    }
}
