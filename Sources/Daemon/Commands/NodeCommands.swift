import BlockCore
import BlockDrivers
import JSON
import QAPI

extension Daemon {
    /// `blockdev-add` (2.6 and flattened forms), `blockdev-del`, `x-blockdev-del`, `query-named-block-nodes`.
    func registerNodeCommands(on table: QMPCommandTable) {
        table.register(BlockdevAddCommand.self) { [unowned self] arguments throws(QAPIError) in
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
                if let device {
                    let backend = BlockBackend(id: device, medium: node, stats: stats, events: graph.events)
                    settings.apply(to: backend, groups: graph.throttleGroups)
                    if runStopped { backend.pause(.stopped) }
                    devices[device] = backend
                }
                return QAPIEmpty()
            }
        }
        table.register(BlockdevDelCommand.self) { [unowned self] arguments throws(QAPIError) in
            try locked { () throws(QAPIError) in
                try deleteNode(arguments.nodeName)
                return QAPIEmpty()
            }
        }
        table.register(XBlockdevDelCommand.self) { [unowned self] arguments throws(QAPIError) in
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
        table.register(BlockResizeCommand.self) { [unowned self] arguments throws(QAPIError) in
            try locked { () throws(QAPIError) in
                let target: BlockNode
                switch (arguments.device, arguments.nodeName) {
                case (let device?, nil):
                    guard let medium = try backend(device).medium else { throw .generic("Device '\(device)' has no medium") }
                    target = medium
                case (nil, let name?):
                    target = try node(name)
                default:
                    throw .generic("Exactly one of 'device' and 'node-name' must be given")
                }
                guard arguments.size >= 0 else { throw .invalidParameterValue("size", expects: "a non-negative size") }
                do throws(BlockError) {
                    try target.resize(to: UInt64(arguments.size))
                } catch {
                    throw .generic("Cannot resize '\(target.name)': \(error.message)")
                }
                Log.info("node '\(target.name)' resized to \(arguments.size) bytes")
                return QAPIEmpty()
            }
        }
        table.register(QueryNamedBlockNodesCommand.self) { [unowned self] _ throws(QAPIError) in
            try locked { () throws(QAPIError) in
                graph.allNodes.filter { !$0.name.hasPrefix("#") }.map { node in
                    blockDeviceInfo(node, device: allDevices().first { $0.backend.medium === node }?.backend)
                }
            }
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

    /// Removes a node that nothing uses.
    func deleteNode(_ name: String) throws(QAPIError) {
        let node = try node(name)
        if let export = server.exports.all.first(where: { $0.backend.medium === node }) {
            throw QAPIError(.deviceInUse, "Node '\(name)' is busy: it is exported as '\(export.id)'")
        }
        if let (id, _) = devices.first(where: { $0.value.medium === node }) {
            throw QAPIError(.deviceInUse, "Node '\(name)' is busy: it is the medium of device '\(id)'")
        }
        do throws(OptionError) {
            try graph.remove(name)
        } catch {
            throw QAPIError(.deviceInUse, error.message)
        }
        openedMedia.remove(name)
    }

    /// A node as BlockDeviceInfo describes it, with the throttling of the device it is the medium of.
    func blockDeviceInfo(_ node: BlockNode, device: BlockBackend?) -> BlockDeviceInfo {
        let image = ImageInfo(
            filename: node.driver.filename, format: node.driver.driverName,
            actualSize: node.driver.allocatedSize.map { Int64(clamping: $0) }, virtualSize: Int64(clamping: node.length))
        return BlockDeviceInfo(
            file: node.driver.filename, nodeName: node.name.hasPrefix("#") ? nil : node.name, ro: node.readOnly,
            drv: node.driver.driverName, backingFileDepth: 0, encrypted: false, encryptionKeyMissing: false,
            detectZeroes: BlockdevDetectZeroesOptions(rawValue: node.detectZeroes.name) ?? .off, bps: 0, bpsRd: 0, bpsWr: 0, iops: 0, iopsRd: 0, iopsWr: 0, image: image,
            cache: BlockdevCacheInfo(writeback: true, direct: node.common.cacheDirect, noFlush: node.common.cacheNoFlush),
            writeThreshold: Int64(clamping: node.writeThreshold))
            .withThrottling(device?.throttleGroup ?? (node.driver as? ThrottleDriver)?.group)
    }
}
