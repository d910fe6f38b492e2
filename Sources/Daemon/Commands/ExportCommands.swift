import BlockCore
import Exports
import JSON
import QAPI
import Sockets
import LogOptionsClock

extension Daemon {
    /// `nbd-server-start/add/remove/stop`, `block-export-add/del`, `query-block-exports`.
    func registerExportCommands(on table: QMPCommandTable) {
        table.register(NbdServerStartInOrder.self) { [unowned self] arguments throws(QAPIError) in try self.nbdServerStart(arguments) }
        table.register(NbdServerStopCommand.self) { [unowned self] _ throws(QAPIError) in try self.nbdServerStop() }
        table.register(NbdServerAddCommand.self) { [unowned self] arguments throws(QAPIError) in try self.nbdServerAdd(arguments) }
        table.register(NbdServerRemoveCommand.self) { [unowned self] arguments throws(QAPIError) in try self.nbdServerRemove(arguments) }
        table.register(BlockExportAddCommand.self) { [unowned self] arguments throws(QAPIError) in try self.blockExportAdd(arguments) }
        table.register(BlockExportDelCommand.self) { [unowned self] arguments throws(QAPIError) in try self.blockExportDel(arguments) }
        table.register(QueryBlockExportsCommand.self) { [unowned self] _ throws(QAPIError) in try self.queryBlockExports() }
    }

    /// `nbd-server-start`: starts the NBD server.
    func nbdServerStart(_ arguments: JSONValue) throws(QAPIError) -> QAPIEmpty {
        // QEMU decodes "addr" to its last member before it looks at the other arguments.
        guard case .object(let members) = arguments, let addr = members["addr"] else {
            _ = try NbdServerStartArguments(decoding: arguments, at: "")
            throw .missingParameter("addr")
        }
        let address = try Daemon.socketAddress(addr)
        let decoded = try NbdServerStartArguments(decoding: arguments, at: "")
        return try locked { () throws(QAPIError) in
            try startServer(decoded, at: address)
            return QAPIEmpty()
        }
    }

    /// `nbd-server-stop`: stops the NBD server.
    func nbdServerStop() throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            guard !server.addresses.isEmpty else { throw .generic("NBD server not running") }
            for export in server.exports.all { removeExport(export.id) }
            for address in server.addresses { server.stopListening(on: address) }
            server.setTLS(nil)
            return QAPIEmpty()
        }
    }

    /// `nbd-server-add`: exports a device or node through the running NBD server.
    func nbdServerAdd(_ arguments: NbdServerAddArguments) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            try addServerExport(arguments)
            return QAPIEmpty()
        }
    }

    /// `nbd-server-remove`: removes an export from the NBD server.
    func nbdServerRemove(_ arguments: NbdServerRemoveArguments) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            // As in QEMU, the name is the export's id (nbd-server-add gives both the same value).
            try removeExport(arguments.name, hard: arguments.mode == .hard)
            return QAPIEmpty()
        }
    }

    /// `block-export-add`: exports a node.
    func blockExportAdd(_ arguments: BlockExportOptions) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            let spec: ExportSpec
            do throws(OptionError) {
                spec = try DaemonConfiguration.parseExport(arguments, syntax: .qmp)
            } catch {
                throw error.qmp
            }
            try addExport(spec)
            return QAPIEmpty()
        }
    }

    /// `block-export-del`: starts removing an export.
    func blockExportDel(_ arguments: BlockExportDelArguments) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            try removeExport(arguments.id, hard: arguments.mode == .hard)
            return QAPIEmpty()
        }
    }

    /// `query-block-exports`: lists the exports.
    func queryBlockExports() throws(QAPIError) -> [BlockExportInfo] {
        server.exports.all.map {
            BlockExportInfo(id: $0.id, type: .nbd, nodeName: $0.backend.medium?.name ?? "", shuttingDown: false)
        }
    }

    /// `nbd-server-start` with its address decoded: listens there unless the server already runs.
    func startServer(_ arguments: NbdServerStartArguments, at address: ListenAddress) throws(QAPIError) {
        guard server.addresses.isEmpty else { throw .generic("NBD server already running") }
        var tls: TLSSettings?
        if let credentials = arguments.tlsCreds {
            do throws(OptionError) {
                tls = try security.serverSettings(credentials: credentials, authorization: arguments.tlsAuthz)
            } catch {
                throw .generic(error.message)
            }
        }
        if let limit = arguments.maxConnections {
            server.setMaxConnections(limit == 0 ? Int(UInt32.max) : Int(limit))
        }
        server.setTLS(tls)
        do throws(OptionError) {
            try server.listen(on: address)
        } catch {
            server.setTLS(nil)
            throw error.qmp
        }
    }

    /// `nbd-server-add`: QEMU looks the device up first (a device, else a node of that name), then
    /// adds a block export whose id and name are the export name.
    func addServerExport(_ arguments: NbdServerAddArguments) throws(QAPIError) {
        guard devices[arguments.device] != nil || graph.node(named: arguments.device) != nil else {
            throw .generic("Cannot find device='\(arguments.device)' nor node-name='\(arguments.device)'")
        }
        let name = arguments.name ?? arguments.device
        // nbd-server-add exports a read-only node read-only rather than refusing "writable".
        let readOnly = (devices[arguments.device]?.medium ?? graph.node(named: arguments.device))?.readOnly ?? false
        try addExport(ExportSpec(
            id: name, nodeName: arguments.device, name: name, description: arguments.description,
            writable: (arguments.writable ?? false) && !readOnly, bitmaps: arguments.bitmap.map { [ExportBitmap(node: nil, name: $0)] } ?? []))
    }

    /// Adds an export of a device (named by its id, or by the node it holds) or of a node no device
    /// holds, which gets an anonymous device of its own. Checked in QEMU's order (`blk_exp_add`,
    /// `nbd_export_create`): the id, the node, the server, the name. Exports of the configuration
    /// are added before the listeners start (`requireServer` false).
    func addExport(_ spec: ExportSpec, requireServer: Bool = true) throws(QAPIError) {
        guard Daemon.isIdentifier(spec.id) else { throw .generic("Invalid block export id") }
        guard server.exports.export(id: spec.id) == nil else { throw .generic("Block export id '\(spec.id)' is already in use") }
        let backend: BlockBackend
        if let device = devices[spec.nodeName] {
            backend = device
        } else {
            guard let node = graph.node(named: spec.nodeName) else {
                throw .generic("Cannot find device='' nor node-name='\(spec.nodeName)'")
            }
            backend = devices.values.first { $0.medium === node } ?? BlockBackend(id: nil, medium: node)
        }
        if spec.writable, backend.medium?.readOnly == true { throw .generic("Cannot export read-only node as writable") }
        guard !requireServer || !server.addresses.isEmpty else { throw .generic("NBD server not running") }
        guard spec.name.utf8.count <= 4096 else { throw .generic("export name '\(spec.name)' too long") }
        if let description = spec.description, description.utf8.count > 4096 {
            throw .generic("description '\(description)' too long")
        }
        guard server.exports.export(named: spec.name) == nil else {
            throw .generic("NBD server already has export named '\(spec.name)'")
        }
        let contexts = try exportContexts(spec, node: backend.medium)
        do throws(OptionError) {
            try server.exports.add(try NBDExport(
                id: spec.id, name: spec.name, description: spec.description, backend: backend, writable: spec.writable,
                resizable: spec.resizable, metaContexts: contexts,
                multiConn: spec.multiConn))
        } catch {
            throw error.qmp
        }
        Log.info("export '\(spec.name)' of \(backend.id.map { "device '\($0)'" } ?? "node '\(spec.nodeName)'") added")
    }

    /// QEMU's `id_wellformed`: a letter, then letters, digits, '-', '.' and '_'.
    static func isIdentifier(_ id: String) -> Bool {
        guard let first = id.unicodeScalars.first, first.isASCII, first.properties.isAlphabetic else { return false }
        return id.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "-._".unicodeScalars.contains($0)) }
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
        guard let export = server.removeExport(id: id) else { return }
        // The export's own device (no id) is now out of reach of `cont` and of the shutdown's release:
        // let the requests its clients already sent run, so that they are answered before the close.
        if export.backend.id == nil { export.backend.resume([.stopped, .ioError]) }
        monitor?.emit(BlockExportDeletedEvent(id: id))
    }
}

/// nbd-server-start with its arguments undecoded, so that the address is checked first, member by
/// member, as QEMU visits it (the schema's NbdServerStartArguments still describes them).
enum NbdServerStartInOrder: QAPICommand {
    static let name = NbdServerStartCommand.name
    typealias Arguments = JSONValue
    typealias Result = QAPIEmpty
}
