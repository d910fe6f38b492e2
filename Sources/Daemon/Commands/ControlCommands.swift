#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import JSON
import QAPI

extension Daemon {
    /// `query-version`, `query-commands`, `query-qmp-schema`, `quit`.
    func registerControlCommands(on table: QMPCommandTable) {
        table.register(QueryVersionCommand.self) { _ throws(QAPIError) in
            VersionInfo(qemu: Daemon.interfaceVersion, package: "blockd \(BlockdVersion.string)")
        }
        table.register(QueryCommandsCommand.self) { [unowned table] _ throws(QAPIError) in
            (table.registeredNames + ["qmp_capabilities"]).sorted().map { CommandInfo(name: $0) }
        }
        table.register(QueryQmpSchemaCommand.self) { _ throws(QAPIError) in
            QAPIIntrospection.entries
        }
        table.register(QuitCommand.self) { _ throws(QAPIError) in
            // The reply goes out first; the main thread then drains and exits as on SIGTERM.
            kill(getpid(), SIGTERM)
            return QAPIEmpty()
        }
    }

    /// The QEMU interface version blockd implements (the contract is QEMU 2.6's schema).
    static let interfaceVersion = VersionTriple(major: 2, minor: 6, micro: 0)
}
