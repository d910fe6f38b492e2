import BlockCore
import JSON
import QAPI
import Synchronization
import LogOptionsClock

extension OptionError {
    /// The error as QMP reports it: GenericError with the same text.
    var qmp: QAPIError { .generic(message) }
}

extension Daemon {
    /// Runs a control-plane change under the daemon's lock; graph and export changes are serialised
    /// between monitor clients and reloads.
    func locked<T: Sendable>(_ body: () throws(QAPIError) -> T) throws(QAPIError) -> T {
        try controlLock.withLock { _ throws(QAPIError) -> T in try body() }
    }

    /// The node named `name`, or DeviceNotFound (QEMU 2.6's class, kept by the commands of its era).
    func node(_ name: String) throws(QAPIError) -> BlockNode {
        guard let node = graph.node(named: name) else { throw .deviceNotFound(name) }
        return node
    }

    /// Registers every command family on a table.
    func registerCommands(on table: QMPCommandTable) {
        registerControlCommands(on: table)
        registerNodeCommands(on: table)
        registerQueryCommands(on: table)
        registerExportCommands(on: table)
        registerPolicyCommands(on: table)
        registerThrottleCommands(on: table)
        registerRunStateCommands(on: table)
        registerMediumCommands(on: table)
        registerGraphCommands(on: table)
        registerObjectCommands(on: table)
        registerBitmapCommands(on: table)
        registerTLSCommands(on: table)
        registerJobCommands(on: table)
        registerCreateCommands(on: table)
        registerMirrorCommands(on: table)
        registerMetricsCommands(on: table)
        registerBackupCommands(on: table)
        registerSnapshotCommands(on: table)
        registerChainJobCommands(on: table)
        registerTransactionCommands(on: table)
    }
}
