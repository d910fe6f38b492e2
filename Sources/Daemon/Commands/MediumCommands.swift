import BlockCore
import Exports
import JSON
import QAPI
import LogOptionsClock

extension Daemon {
    /// `blockdev-open-tray`, `blockdev-close-tray`, `x-blockdev-remove-medium` and `x-blockdev-insert-medium`
    /// (with their later names `blockdev-remove-medium`, `blockdev-insert-medium`), `blockdev-change-medium`.
    func registerMediumCommands(on table: QMPCommandTable) {
        table.register(BlockdevOpenTrayCommand.self) { [unowned self] arguments throws(QAPIError) in try self.blockdevOpenTray(arguments) }
        table.register(BlockdevCloseTrayCommand.self) { [unowned self] arguments throws(QAPIError) in try self.blockdevCloseTray(arguments) }
        table.register(XBlockdevRemoveMediumCommand.self) { [unowned self] arguments throws(QAPIError) in try self.xBlockdevRemoveMedium(arguments) }
        table.register(BlockdevRemoveMediumCommand.self) { [unowned self] arguments throws(QAPIError) in try self.blockdevRemoveMedium(arguments) }
        table.register(XBlockdevInsertMediumCommand.self) { [unowned self] arguments throws(QAPIError) in try self.xBlockdevInsertMedium(arguments) }
        table.register(BlockdevInsertMediumCommand.self) { [unowned self] arguments throws(QAPIError) in try self.blockdevInsertMedium(arguments) }
        table.register(BlockdevChangeMediumCommand.self) { [unowned self] arguments throws(QAPIError) in try self.blockdevChangeMedium(arguments) }
    }

    /// `blockdev-open-tray`: opens a device's tray.
    func blockdevOpenTray(_ arguments: BlockdevOpenTrayArguments) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            let (name, backend) = try device(arguments.device, arguments.id)
            moveTray(of: backend, name: name, open: true)
            return QAPIEmpty()
        }
    }

    /// `blockdev-close-tray`: closes a device's tray.
    func blockdevCloseTray(_ arguments: BlockdevCloseTrayArguments) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            let (name, backend) = try device(arguments.device, arguments.id)
            moveTray(of: backend, name: name, open: false)
            return QAPIEmpty()
        }
    }

    /// `x-blockdev-remove-medium`: takes the medium out of a device.
    func xBlockdevRemoveMedium(_ arguments: XBlockdevRemoveMediumArguments) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            try removeMedium(try device(arguments.device, arguments.id))
            return QAPIEmpty()
        }
    }

    /// `blockdev-remove-medium`: the later name of x-blockdev-remove-medium.
    func blockdevRemoveMedium(_ arguments: BlockdevRemoveMediumArguments) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            try removeMedium(try device(nil, arguments.id))
            return QAPIEmpty()
        }
    }

    /// `x-blockdev-insert-medium`: puts a node into a device as its medium.
    func xBlockdevInsertMedium(_ arguments: XBlockdevInsertMediumArguments) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            try insertMedium(arguments.nodeName, into: arguments.device, arguments.id)
            return QAPIEmpty()
        }
    }

    /// `blockdev-insert-medium`: the later name of x-blockdev-insert-medium.
    func blockdevInsertMedium(_ arguments: BlockdevInsertMediumArguments) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            try insertMedium(arguments.nodeName, into: nil, arguments.id)
            return QAPIEmpty()
        }
    }

    /// `blockdev-change-medium`: replaces the medium of a device with a newly opened image.
    func blockdevChangeMedium(_ arguments: BlockdevChangeMediumArguments) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            try changeMedium(arguments)
            return QAPIEmpty()
        }
    }

    /// The device a medium command names with exactly one of `device` (QEMU 2.6) and `id` (later QEMU).
    private func device(_ device: String?, _ id: String?) throws(QAPIError) -> (name: String, backend: BlockBackend) {
        switch (device, id) {
        case (let name?, nil), (nil, let name?):
            return (name, try backend(name))
        default:
            throw .generic("Need exactly one of 'device' and 'id'")
        }
    }

    /// Opens or closes a tray and announces it; nothing happens when it already is in that position.
    private func moveTray(of backend: BlockBackend, name: String, open: Bool) {
        guard backend.moveTray(open: open) else { return }
        Log.info("device '\(name)': tray \(open ? "opened" : "closed")")
        monitor?.emit(DeviceTrayMovedEvent(device: name, id: name, trayOpen: open))
    }

    private func removeMedium(_ device: (name: String, backend: BlockBackend)) throws(QAPIError) {
        let removed: BlockBackend.Medium?
        do {
            removed = try device.backend.removeMedium()
        } catch {
            throw Daemon.mediumError(error, device.name)
        }
        guard let removed else { return }
        Log.info("device '\(device.name)': medium '\(removed.node.name)' removed")
        retire(removed)
    }

    private func insertMedium(_ nodeName: String, into device: String?, _ id: String?) throws(QAPIError) {
        guard let node = graph.node(named: nodeName) else { throw .generic("Node '\(nodeName)' not found") }
        if let user = mediumUser(node) { throw .generic("Node '\(nodeName)' is already in use by '\(user)'") }
        if let parent = graph.parents(of: node).first {
            throw .generic("Node '\(nodeName)' is already in use by node '\(parent.name)'")
        }
        let (name, backend) = try self.device(device, id)
        do {
            try backend.insertMedium(node)
        } catch {
            throw Daemon.mediumError(error, name)
        }
        Log.info("device '\(name)': medium '\(nodeName)' inserted")
    }

    /// Opens `filename` as a new node and swaps it in for the device's medium in one step.
    private func changeMedium(_ arguments: BlockdevChangeMediumArguments) throws(QAPIError) {
        let (name, backend) = try device(arguments.device, arguments.id)
        guard backend.isRemovable else { throw Daemon.mediumError(.notRemovable, name) }
        let readOnly: Bool
        switch arguments.readOnlyMode {
        case .readOnly?: readOnly = true
        case .readWrite?: readOnly = false
        case .retain?, nil: readOnly = backend.lastReadOnly
        }
        // No format is probed: an image is raw unless `format` says otherwise.
        let driver = arguments.format ?? "raw"
        var options: [String: JSONValue] = ["driver": .string(driver), "read-only": .bool(readOnly)]
        if ["file", "host_device", "host_cdrom"].contains(driver) {
            options["filename"] = .string(arguments.filename)
        } else {
            options["file"] = .object(["driver": .string("file"), "filename": .string(arguments.filename)])
        }
        let node: BlockNode
        do throws(OptionError) {
            node = try graph.open(.object(options), context: "blockdev-change-medium", syntax: .qmp)
        } catch {
            throw error.qmp
        }
        let change: (old: BlockBackend.Medium?, trayWasOpen: Bool)
        do {
            change = try backend.changeMedium(to: node)
        } catch {
            try? graph.remove(node.name)
            throw Daemon.mediumError(error, name)
        }
        openedMedia.insert(node.name)
        Log.info("device '\(name)': medium changed to '\(arguments.filename)' (\(driver)\(readOnly ? ", read-only" : ""))")
        if let old = change.old { retire(old) }
        if !change.trayWasOpen { monitor?.emit(DeviceTrayMovedEvent(device: name, id: name, trayOpen: true)) }
        monitor?.emit(DeviceTrayMovedEvent(device: name, id: name, trayOpen: false))
    }

    /// Who has `node` as medium: a device's id, or the id of the export whose own device it is.
    private func mediumUser(_ node: BlockNode) -> String? {
        if let (id, _) = devices.first(where: { $0.value.medium === node }) { return id }
        return server.exports.all.first { $0.backend.id == nil && $0.backend.medium === node }?.id
    }

    /// Lets go of a medium taken out of its device: a node blockdev-change-medium opened leaves the graph
    /// and is closed once no client request holds it any more; other nodes stay in the graph.
    private func retire(_ medium: BlockBackend.Medium) {
        guard openedMedia.remove(medium.node.name) != nil else { return }
        do throws(OptionError) {
            medium.closeWhenReleased(try graph.detach(medium.node.name))
        } catch {
            Log.error("closing medium '\(medium.node.name)': \(error.message)")
        }
    }

    /// A refused medium change as QEMU words it.
    private static func mediumError(_ error: BlockBackend.MediumError, _ device: String) -> QAPIError {
        switch error {
        case .notRemovable: return .generic("Device '\(device)' is not removable")
        case .trayClosed: return .generic("Tray of device '\(device)' is not open")
        case .mediumPresent: return .generic("There already is a medium in device '\(device)'")
        }
    }
}
