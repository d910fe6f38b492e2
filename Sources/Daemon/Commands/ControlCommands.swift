#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import JSON
import QAPI

extension Daemon {
    /// `query-version`, `query-commands`, `query-qmp-schema`, `quit`.
    func registerControlCommands(on table: QMPCommandTable) {
        table.register(QueryVersionCommand.self) { [unowned self] _ throws(QAPIError) in try self.queryVersion() }
        table.register(QueryCommandsCommand.self) { [unowned table] _ throws(QAPIError) in Daemon.queryCommands(in: table) }
        table.register(QueryQmpSchemaCommand.self) { [unowned self] _ throws(QAPIError) in try self.queryQmpSchema() }
        table.register(QuitCommand.self) { [unowned self] _ throws(QAPIError) in try self.quit() }
    }

    /// `query-version`: tells which version of the interface and of the server is running.
    func queryVersion() throws(QAPIError) -> VersionInfo {
        VersionInfo(qemu: Daemon.interfaceVersion, package: "blockd \(BlockdVersion.string)")
    }

    /// `query-commands`: the commands registered on `table`, and qmp_capabilities, which the session handles.
    static func queryCommands(in table: QMPCommandTable) -> [CommandInfo] {
        (table.registeredNames + ["qmp_capabilities"]).sorted().map { CommandInfo(name: $0) }
    }

    /// `query-qmp-schema`: describes the whole interface.
    func queryQmpSchema() throws(QAPIError) -> [JSONValue] {
        QAPIIntrospection.entries
    }

    /// `quit`: asks the server to exit.
    func quit() throws(QAPIError) -> QAPIEmpty {
        // The reply goes out first; the main thread then drains and exits as on SIGTERM.
        kill(getpid(), SIGTERM)
        return QAPIEmpty()
    }

    /// The QEMU interface version blockd implements (the contract is QEMU 2.6's schema).
    static let interfaceVersion = VersionTriple(major: 2, minor: 6, micro: 0)
}
