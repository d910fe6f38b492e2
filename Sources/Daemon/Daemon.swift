#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import BlockDrivers
import BlockIO
import Exports

/// The running daemon: the graph, the NBD server, and the process lifecycle around them.
public final class Daemon {
    /// The block graph.
    public let graph = BlockGraph(drivers: Drivers.all)
    /// The NBD server.
    public private(set) var server = NBDServer()
    private let configuration: DaemonConfiguration

    /// Creates a daemon for a configuration; nothing is opened yet.
    public init(configuration: DaemonConfiguration) {
        self.configuration = configuration
    }

    /// Opens every node, starts the listeners and adds the exports; throws on the first problem.
    public func start() throws(OptionError) {
        for blockdev in configuration.blockdevs {
            let node = try graph.open(blockdev)
            Log.debug("opened node '\(node.name)' (\(node.driver.driverName), \(node.length) bytes)")
        }
        var limits = ServerLimits()
        if let first = configuration.servers.first {
            if first.maxConnections > 0 { limits.maxConnections = first.maxConnections }
            limits.handshakeTimeout = first.handshakeSeconds
        }
        server = NBDServer(limits: limits, engineFactory: { URingEngine() })
        for spec in configuration.exports {
            guard let node = graph.node(named: spec.nodeName) else {
                throw OptionError("--export '\(spec.id)': no node named '\(spec.nodeName)'")
            }
            try server.exports.add(try NBDExport(id: spec.id, name: spec.name, description: spec.description, node: node, writable: spec.writable))
            Log.info("export '\(spec.name)' of node '\(node.name)' (\(node.length) bytes, \(spec.writable ? "writable" : "read-only"))")
        }
        for spec in configuration.servers {
            try server.listen(on: spec.address)
        }
    }

    /// Drains the connections and flushes and closes every node.
    public func stop() {
        server.shutdown()
        for node in graph.allNodes where !node.readOnly {
            do {
                try node.flush()
            } catch {
                Log.error("flush of node '\(node.name)' at shutdown failed: \(error)")
            }
        }
        graph.closeAll()
    }
}
