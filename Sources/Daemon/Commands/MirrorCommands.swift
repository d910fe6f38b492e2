import BlockCore
import LogOptionsClock
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
        var copyMode: MirrorCopyMode?
        var replaces: String?
        var filterNodeName: String?
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
                onSourceError: arguments.onSourceError, onTargetError: arguments.onTargetError, unmap: nil,
                copyMode: arguments.copyMode, replaces: arguments.replaces, filterNodeName: arguments.filterNodeName)
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
                onSourceError: arguments.onSourceError, onTargetError: arguments.onTargetError, unmap: arguments.unmap,
                copyMode: arguments.copyMode, replaces: arguments.replaces)
            try checkMirrorSettings(settings)
            if let replaces = arguments.replaces {
                guard arguments.nodeName != nil else {
                    throw .generic("a node-name must be provided when replacing a named node of the graph")
                }
                _ = try nodeToReplace(replaces, from: source)
            }
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
        let replaced = try settings.replaces.map { (name) throws(QAPIError) in try nodeToReplace(name, from: source) }
        if let filterName = settings.filterNodeName {
            guard BlockGraph.isValidNodeName(filterName) else { throw .generic("Invalid node-name: '\(filterName)'") }
            guard graph.node(named: filterName) == nil else { throw .generic("Duplicate nodes with node-name='\(filterName)'") }
        }
        let sync: MirrorSync = settings.sync == .full ? .full : settings.sync == .top ? .top : .none
        let driver = MirrorJob(
            source: source, target: target, sync: sync, granularity: UInt64(settings.granularity ?? 65536),
            bufferSize: Int(settings.bufSize.map { $0 > 0 ? $0 : 16 << 20 } ?? 16 << 20),
            onSourceError: Daemon.policy(settings.onSourceError), onTargetError: Daemon.policy(settings.onTargetError),
            unmap: settings.unmap ?? true, copyMode: settings.copyMode == .writeBlocking ? .writeBlocking : .background, devices: { [weak self] in self?.allBackends() ?? [] })
        if let replaced, replaced !== source {
            driver.replacing = { [weak self] in self?.replaceNode(replaced, with: target) }
        }
        if let filterName = settings.filterNodeName {
            let filter = MirrorTopDriver.node(named: filterName, over: source)
            do throws(OptionError) {
                try graph.insert(filter)
            } catch {
                throw .generic(error.message)
            }
            driver.filterNode = filter
            driver.removeFilter = { [weak self] in _ = try? self?.graph.detach(filterName) }
        }
        guard driver.attach() else {
            driver.removeFilter?()
            throw .generic("Node '\(source.name)' is busy: block device is in use by a block job")
        }
        do throws(QAPIError) {
            _ = try startJob(id: id, driver: driver, start: start)
        } catch {
            driver.removeFilter?()
            driver.detachHook()
            throw error
        }
    }

    /// The node a mirror's `replaces` names, checked as QEMU does: it must exist, be the source or
    /// a child of a quorum source that nothing else uses, and have the source's size.
    private func nodeToReplace(_ name: String, from source: BlockNode) throws(QAPIError) -> BlockNode {
        guard let node = graph.node(named: name) else { throw .generic("Failed to find node with node-name='\(name)'") }
        let replaceable = node === source
            || (source.driver is any ChildReplacing && source.children.contains { $0.node === node }
                && graph.parents(of: node).count == 1 && !allBackendsLocked().contains { $0.medium === node })
        guard replaceable else {
            throw .generic("Cannot replace '\(name)' by a node mirrored from '\(source.name)', because it cannot be guaranteed "
                           + "that doing so would not lead to an abrupt change of visible data")
        }
        guard node.length == source.length else { throw .generic("cannot replace image with a mirror image of different size") }
        return node
    }

    /// The pivot of a mirror with `replaces`: `new` takes `old`'s place under its parents and devices.
    func replaceNode(_ old: BlockNode, with new: BlockNode) {
        controlLock.withLock { _ in
            for parent in graph.parents(of: old) { _ = parent.replaceChild(old, with: new) }
            for device in allBackendsLocked() { _ = device.replaceMedium(old, with: new) }
        }
    }

    /// A job error policy from its QAPI value (report when absent).
    static func policy(_ value: BlockdevOnError?) -> JobErrorPolicy {
        JobErrorPolicy(rawValue: value?.rawValue ?? "report") ?? .report
    }
}
