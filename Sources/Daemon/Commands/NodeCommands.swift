#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import BlockDrivers
import Jobs
import JSON
import QAPI
import LogOptionsClock

extension Daemon {
    /// `blockdev-add` (2.6 and flattened forms), `blockdev-del`, `x-blockdev-del`, `query-named-block-nodes`.
    func registerNodeCommands(on table: QMPCommandTable) {
        table.register(BlockdevAddCommand.self) { [unowned self] arguments throws(QAPIError) in try self.blockdevAdd(arguments) }
        table.register(BlockdevDelCommand.self) { [unowned self] arguments throws(QAPIError) in try self.blockdevDel(arguments) }
        table.register(XBlockdevDelCommand.self) { [unowned self] arguments throws(QAPIError) in try self.xBlockdevDel(arguments) }
        table.register(BlockResizeCommand.self) { [unowned self] arguments throws(QAPIError) in try self.blockResize(arguments) }
        table.register(BlockPasswdCommand.self) { [unowned self] arguments throws(QAPIError) in try self.blockPasswd(arguments) }
        table.register(QueryNamedBlockNodesCommand.self) { [unowned self] arguments throws(QAPIError) in try self.queryNamedBlockNodes(arguments) }
    }

    /// `blockdev-add`: opens a new node.
    func blockdevAdd(_ arguments: BlockdevOptions) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            // 2.6: {"options": {...}} with an optional top-level "id" that creates a device.
            // Modern QEMU: the options themselves.
            var options = arguments
            var device: String?
            var backend: [String: JSONValue] = [:]
            if case .object(let members) = arguments, members.count == 1, case .object(var inner)? = members["options"] {
                if case .string(let id)? = inner["id"] {
                    device = id
                    inner.removeValue(forKey: "id")
                }
                // Settings of the device (BlockBackend), not of the node.
                for key in ["stats-account-invalid", "stats-account-failed", "stats-intervals"] + DeviceOptions.keys {
                    if let value = inner.removeValue(forKey: key) { backend[key] = value }
                }
                for key in inner.keys where key.hasPrefix("throttling.") {
                    backend[key] = inner.removeValue(forKey: key)
                }
                options = .object(inner)
            }
            if !backend.isEmpty && device == nil {
                throw .generic("\(backend.keys.sorted().joined(separator: ", ")) can only be given with an id")
            }
            let stats = try Daemon.deviceStatistics(backend)
            let settings = try DeviceOptions(backend)
            if let limits = settings.limits, let name = settings.group ?? device,
               let existing = graph.throttleGroups.group(named: name), existing.isPersistent, existing.limits != limits {
                throw .generic("Throttle group '\(name)' is an object with limits of its own; give no throttling limits to join it")
            }
            if device == nil, case .object(let members) = options, members["node-name"] == nil {
                throw .generic("'node-name' must be specified for the root node")
            }
            if let device {
                guard devices[device] == nil else { throw .generic("Device with id '\(device)' already exists") }
                guard case .string? = options["node-name"] else {
                    throw .generic("blockdev-add with an id needs a node-name in blockd")
                }
            }
            let node: BlockNode
            do throws(OptionError) {
                node = try graph.open(options, context: "blockdev-add", syntax: .qmp)
            } catch {
                throw error.qmp
            }
            recordDefinition(of: node, options, ownedByMonitor: true)
            if let device {
                let backend = BlockBackend(id: device, medium: node, stats: stats, events: graph.events)
                settings.apply(to: backend, groups: graph.throttleGroups)
                if runStopped { backend.pause(.stopped) }
                devices[device] = backend
            }
            return QAPIEmpty()
        }
    }

    /// `blockdev-del`: closes a node that blockdev-add opened.
    func blockdevDel(_ arguments: BlockdevDelArguments) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            try deleteNode(arguments.nodeName)
            return QAPIEmpty()
        }
    }

    /// `x-blockdev-del`: closes a device or node that blockdev-add opened.
    func xBlockdevDel(_ arguments: XBlockdevDelArguments) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            switch (arguments.id, arguments.nodeName) {
            case (let id?, nil):
                guard let device = devices[id] else { throw .deviceNotFound(id) }
                if let export = server.exports.all.first(where: { $0.backend === device }) {
                    throw QAPIError(.deviceInUse, "Device '\(id)' is in use by export '\(export.id)'")
                }
                devices.removeValue(forKey: id)
                if let group = device.setThrottleGroup(nil) { graph.throttleGroups.dropIfUnused(group) }
                device.resume([.stopped, .ioError])
                if let medium = device.medium { try deleteNode(medium.name) }
            case (nil, let name?):
                if let (id, _) = devices.first(where: { $0.value.medium?.name == name }) {
                    throw .generic("Node '\(name)' is attached to device '\(id)'; delete the device instead")
                }
                try deleteNode(name)
            default:
                throw .generic("Exactly one of 'id' and 'node-name' must be given")
            }
            return QAPIEmpty()
        }
    }

    /// `block_resize`: changes the size of an image while it is in use.
    func blockResize(_ arguments: BlockResizeArguments) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            try resize(arguments)
            return QAPIEmpty()
        }
    }

    /// `block_passwd`: once gave the password of an encrypted device.
    func blockPasswd(_: BlockPasswdArguments) throws(QAPIError) -> QAPIEmpty {
        // QEMU's answer from 2.10 until it removed the command: passwords are secret objects now.
        throw .generic("Setting block passwords directly is no longer supported")
    }

    /// `query-named-block-nodes`: lists every node, those with generated names.
    func queryNamedBlockNodes(_ arguments: QueryNamedBlockNodesArguments) throws(QAPIError) -> [BlockDeviceInfo] {
        try locked { () throws(QAPIError) in
            // Every node, generated names included, with no device's settings (QEMU passes none).
            graph.allNodes.map { blockDeviceInfo($0, device: nil, flat: arguments.flat ?? false) }
        }
    }

    /// The statistics of a new device from its `stats-*` options.
    static func deviceStatistics(_ options: [String: JSONValue]) throws(QAPIError) -> BlockCore.BlockStats {
        let stats = BlockCore.BlockStats()
        if let value = options["stats-account-invalid"] {
            guard case .bool(let flag) = value else { throw .invalidParameterType("options.stats-account-invalid", expected: "bool") }
            stats.accountInvalid.store(flag, ordering: .relaxed)
        }
        if let value = options["stats-account-failed"] {
            guard case .bool(let flag) = value else { throw .invalidParameterType("options.stats-account-failed", expected: "bool") }
            stats.accountFailed.store(flag, ordering: .relaxed)
        }
        if let value = options["stats-intervals"] {
            guard case .array(let items) = value else { throw .invalidParameterType("options.stats-intervals", expected: "array") }
            var intervals: [UInt32] = []
            for item in items {
                guard case .integer(let seconds) = item, seconds > 0, seconds <= 86_400 else {
                    throw .generic("Invalid interval length in options.stats-intervals: \(item.serialized())")
                }
                intervals.append(UInt32(seconds))
            }
            stats.setIntervals(intervals)
        }
        return stats
    }

    /// Removes a node that blockdev-add or --blockdev created and that nothing uses, refused as
    /// QEMU 7.2 refuses it (`qmp_blockdev_del`).
    func deleteNode(_ name: String) throws(QAPIError) {
        guard let node = graph.node(named: name) else { throw .generic("Failed to find node with node-name='\(name)'") }
        let exported = server.exports.all.contains { $0.backend.medium === node }
        if exported || devices.values.contains(where: { $0.medium === node }) { throw .generic("Node \(name) is in use") }
        // A job's filter node (mirror_top) is held by its job.
        if node.driver is MirrorTopDriver { throw .generic("Node \(name) is in use") }
        guard isOwnedByMonitor(node) || openedMedia.contains(name) else {
            throw .generic("Node \(name) is not owned by the monitor")
        }
        do throws(OptionError) {
            try graph.remove(name)
        } catch {
            throw .generic("Block device \(name) is in use")
        }
        openedMedia.remove(name)
        nodeDefinitions.removeValue(forKey: name)
    }

    /// `block_resize`: QEMU's lookup (the device first, then the node), its checks and messages;
    /// the size is rounded up to 512 bytes, which qcow2 refuses instead.
    func resize(_ arguments: BlockResizeArguments) throws(QAPIError) {
        let target = try resizeTarget(device: arguments.device, nodeName: arguments.nodeName)
        guard arguments.size >= 0 else { throw .invalidParameterValue("size", expects: "a >0 size") }
        if let conflict = permissionConflict(on: target, needing: .resize) { throw conflict }
        if target.readOnly { throw .generic("Image is read-only") }
        var size = UInt64(arguments.size)
        if target.driver.driverName == "raw" && definition(of: target)["size"] != nil {
            throw .generic("Cannot resize fixed-size raw disks")
        }
        if size % 512 != 0 {
            if target.driver.driverName == "qcow2" { throw .generic("The new size must be a multiple of 512") }
            size = (size + 511) / 512 * 512
        }
        do throws(BlockError) {
            try target.resize(to: size)
        } catch where error.errno == ENOTSUP {
            throw .generic("Image format driver does not support resize")
        } catch {
            throw .generic("Cannot resize '\(target.name)': \(error.message)")
        }
        Log.info("node '\(target.name)' resized to \(size) bytes")
    }

    /// QEMU's `bdrv_lookup_bs`: the medium of device `device` when there is such a device, else the
    /// node `nodeName`. Export ids name their export's device too (a blockd extension).
    private func resizeTarget(device: String?, nodeName: String?) throws(QAPIError) -> BlockNode {
        if let device, let backend = devices[device] ?? server.exports.export(id: device)?.backend {
            guard let medium = backend.medium else { throw .generic("Device '\(device)' has no medium") }
            return medium
        }
        if let nodeName, let node = graph.node(named: nodeName) { return node }
        throw .generic("Cannot find device='\(device ?? "")' nor node-name='\(nodeName ?? "")'")
    }
}
