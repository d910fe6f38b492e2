import BlockCore
import Exports
import JSON
import QAPI
import Sockets

extension Daemon {
    /// `nbd-server-start/add/remove/stop`, `block-export-add/del`, `query-block-exports`.
    func registerExportCommands(on table: QMPCommandTable) {
        table.register(NbdServerStartCommand.self) { [unowned self] arguments throws(QAPIError) in
            try locked { () throws(QAPIError) in
                guard server.addresses.isEmpty else { throw .generic("NBD server already running") }
                if arguments.tlsCreds != nil { throw .generic("TLS is not supported yet") }
                let address = try Daemon.socketAddress(arguments.addr)
                if let limit = arguments.maxConnections {
                    server.setMaxConnections(limit == 0 ? Int(UInt32.max) : Int(limit))
                }
                do throws(OptionError) {
                    try server.listen(on: address)
                } catch {
                    throw error.qmp
                }
                return QAPIEmpty()
            }
        }
        table.register(NbdServerStopCommand.self) { [unowned self] _ throws(QAPIError) in
            try locked { () throws(QAPIError) in
                guard !server.addresses.isEmpty else { throw .generic("NBD server not running") }
                for export in server.exports.all { removeExport(export.id) }
                for address in server.addresses { server.stopListening(on: address) }
                return QAPIEmpty()
            }
        }
        table.register(NbdServerAddCommand.self) { [unowned self] arguments throws(QAPIError) in
            try locked { () throws(QAPIError) in
                guard !server.addresses.isEmpty else { throw .generic("NBD server not running") }
                if arguments.bitmap != nil { throw .generic("Exporting dirty bitmaps is not supported yet") }
                let name = arguments.name ?? arguments.device
                try addExport(ExportSpec(
                    id: name, nodeName: arguments.device, name: name, description: arguments.description,
                    writable: arguments.writable ?? false))
                return QAPIEmpty()
            }
        }
        table.register(NbdServerRemoveCommand.self) { [unowned self] arguments throws(QAPIError) in
            try locked { () throws(QAPIError) in
                guard let export = server.exports.export(named: arguments.name) else {
                    throw .generic("Export '\(arguments.name)' is not found")
                }
                try removeExport(export.id, hard: arguments.mode == .hard)
                return QAPIEmpty()
            }
        }
        table.register(BlockExportAddCommand.self) { [unowned self] arguments throws(QAPIError) in
            try locked { () throws(QAPIError) in
                let spec: ExportSpec
                do throws(OptionError) {
                    spec = try DaemonConfiguration.parseExport(arguments, syntax: .qmp)
                } catch {
                    throw error.qmp
                }
                guard !server.addresses.isEmpty else { throw .generic("NBD server not running") }
                try addExport(spec)
                return QAPIEmpty()
            }
        }
        table.register(BlockExportDelCommand.self) { [unowned self] arguments throws(QAPIError) in
            try locked { () throws(QAPIError) in
                guard server.exports.export(id: arguments.id) != nil else {
                    throw .generic("Export '\(arguments.id)' is not found")
                }
                try removeExport(arguments.id, hard: arguments.mode == .hard)
                return QAPIEmpty()
            }
        }
        table.register(QueryBlockExportsCommand.self) { [unowned self] _ throws(QAPIError) in
            server.exports.all.map {
                BlockExportInfo(id: $0.id, type: .nbd, nodeName: $0.backend.medium?.name ?? "", shuttingDown: false)
            }
        }
    }

    /// Adds an export of a device (named by its id, or by the node it holds) or of a node no device
    /// holds, which gets an anonymous device of its own.
    func addExport(_ spec: ExportSpec) throws(QAPIError) {
        guard server.exports.export(id: spec.id) == nil else { throw .generic("Block export id '\(spec.id)' is already in use") }
        let backend: BlockBackend
        if let device = devices[spec.nodeName] {
            backend = device
        } else {
            let node = try node(spec.nodeName)
            backend = devices.values.first { $0.medium === node } ?? BlockBackend(id: nil, medium: node)
        }
        do throws(OptionError) {
            try server.exports.add(try NBDExport(
                id: spec.id, name: spec.name, description: spec.description, backend: backend, writable: spec.writable,
                resizable: spec.resizable, metaContexts: spec.allocationDepth ? [.baseAllocation, .allocationDepth] : [.baseAllocation]))
        } catch {
            throw error.qmp
        }
        Log.info("export '\(spec.name)' of \(backend.id.map { "device '\($0)'" } ?? "node '\(spec.nodeName)'") added")
    }

    /// Removes an export: in safe mode only when no client uses it (checked atomically with clients
    /// attaching); in hard mode its clients are disconnected.
    func removeExport(_ id: String, hard: Bool = true) throws(QAPIError) {
        guard !hard else { return removeExport(id) }
        switch server.removeExportIfUnused(id: id) {
        case .removed:
            monitor?.emit(BlockExportDeletedEvent(id: id))
        case .inUse:
            // QEMU's message; its hint (use mode 'hard') is for the human monitor only.
            throw .generic("export '\(id)' still in use")
        case .notFound:
            throw .generic("Export '\(id)' is not found")
        }
    }

    /// Removes an export and announces it.
    func removeExport(_ id: String) {
        guard server.removeExport(id: id) != nil else { return }
        monitor?.emit(BlockExportDeletedEvent(id: id))
    }

    /// An address in either SocketAddress form: 2.6's `{"type": "unix", "data": {...}}` or the flat one.
    static func socketAddress(_ value: JSONValue) throws(QAPIError) -> ListenAddress {
        guard case .object(var members) = value else { throw .invalidParameterType("addr", expected: "object") }
        if case .object(let data)? = members["data"], members.count == 2 {
            members = data.merging(["type": members["type"] ?? .null]) { current, _ in current }
        }
        do throws(OptionError) {
            return try ListenAddress.parse(OptionReader(.object(members), context: "nbd-server-start: addr"))
        } catch {
            throw error.qmp
        }
    }
}
