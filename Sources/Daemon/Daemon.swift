#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import BlockDrivers
import BlockIO
import Exports
import Jobs
import JSON
import QAPI
import QMP
import Sockets
import Synchronization
import LogOptionsClock
import MetricsHTTP

/// The running daemon: the graph, the NBD server, the QMP monitor, and the changes a reload or a
/// monitor command makes to them. Control-plane changes are serialised by `controlLock`.
///
/// `@unchecked Sendable`: the mutable properties below (`devices`, `runStopped`, `openedMedia`,
/// `nodeDefinitions`, `server`, `configuration`, `monitor`) are read and changed only with
/// `controlLock` held (through `locked`, `reload` and the shutdown path), or before the monitor
/// starts; the lock guards whole multi-step changes of the graph, not one value, so they are not
/// moved into it.
public final class Daemon: @unchecked Sendable {
    /// The block graph.
    public let graph = BlockGraph(drivers: Drivers.all)
    /// The NBD server.
    public private(set) var server = NBDServer()
    private var configuration: DaemonConfiguration
    private let activation: SocketActivation?
    /// Serialises monitor commands and reloads.
    let controlLock = Mutex<Void>(())
    /// Devices created by the 2.6 form of `blockdev-add` with an `id`, by id.
    var devices: [String: BlockBackend] = [:]
    /// Whether QMP `stop` put the server in the stopped run state.
    var runStopped = false
    /// Nodes that blockdev-change-medium opened: closed when they are taken out of their device.
    var openedMedia: Set<String> = []
    /// The definitions top-level nodes were opened with, by node name (see NodeDefinitions.swift).
    var nodeDefinitions: [String: NodeDefinition] = [:]
    /// The QMP monitor, when `--monitor` asked for one.
    private(set) var monitor: QMPServer?
    /// TLS credentials and authorization objects.
    let security = SecurityRegistry()
    /// The block jobs that have not reached `null` (JobCommands.swift).
    let jobs = JobRegistry()
    /// The Prometheus metrics endpoint, when `--metrics` or x-blockd-metrics-start started one (MetricsCommands.swift).
    var metricsServer: MetricsHTTPServer?

    /// Creates a daemon for a configuration; nothing is opened yet.
    public init(configuration: DaemonConfiguration, activation: SocketActivation? = nil) {
        self.configuration = configuration
        self.activation = activation
    }

    /// Opens every node, adds the exports and starts the listeners; throws on the first problem.
    public func start() throws(OptionError) {
        let addresses = try listenAddresses(configuration)
        if !configuration.exports.isEmpty && addresses.isEmpty {
            throw OptionError("--export type=nbd needs an --nbd-server to serve it")
        }
        applyThrottleGroups(configuration.throttleGroups)
        try applySecurityObjects(configuration.securityObjects)
        for (blockdev, location) in zip(configuration.blockdevs, configuration.blockdevLocations) {
            try openNode(blockdev, location: location)
        }
        var limits = ServerLimits()
        if let first = configuration.servers.first {
            if first.maxConnections > 0 { limits.maxConnections = first.maxConnections }
            limits.handshakeTimeout = first.handshakeSeconds
        }
        server = NBDServer(limits: limits, engineFactory: { CombinedEngine(ring: URingEngine()) })
        try applyServerTLS(configuration.servers)
        for spec in configuration.exports { try addConfiguredExport(spec) }
        for address in addresses { try server.listen(on: address) }
        try startMonitors()
        if let address = configuration.metrics { try startMetricsEndpoint(at: address) }
    }

    /// Starts a QMP monitor on each `--monitor`'s chardev.
    private func startMonitors() throws(OptionError) {
        guard !configuration.monitors.isEmpty else { return }
        let table = QMPCommandTable()
        registerCommands(on: table)
        let greeting = QMPSession.greeting(
            version: (Daemon.interfaceVersion.major, Daemon.interfaceVersion.minor, Daemon.interfaceVersion.micro),
            package: "blockd \(BlockdVersion.string)")
        let monitor = QMPServer(commands: table, greeting: greeting)
        self.monitor = monitor
        for spec in configuration.monitors {
            guard let chardev = configuration.chardevs.first(where: { $0.id == spec.chardev }) else { continue }
            let address = activation.map { (try? $0.resolve(chardev.address)) ?? chardev.address } ?? chardev.address
            try monitor.listen(on: address, pretty: spec.pretty)
        }
    }

    /// One line for `STATUS=`: what is exported where.
    public var status: String {
        let exports = server.exports.all.map(\.name)
        let names = exports.isEmpty ? "nothing" : exports.map { "'\($0)'" }.joined(separator: ", ")
        return "exporting \(names) on \(server.addresses.map(\.description).joined(separator: ", "))"
    }

    /// Changes the running daemon to `new`: exports, nodes and listeners that are the same stay untouched
    /// (their clients go on); removed or changed ones are taken down; new ones are set up. The new
    /// configuration is checked before anything changes; a node that fails to open is reported and
    /// left out, with its export.
    public func reload(_ new: DaemonConfiguration) throws(OptionError) {
        try controlLock.withLock { _ throws(OptionError) in try applyReload(new) }
    }

    /// `reload` with the control lock held.
    private func applyReload(_ new: DaemonConfiguration) throws(OptionError) {
        let old = configuration
        let newAddresses = try listenAddresses(new)
        let oldAddresses = server.addresses
        let droppedNodes = old.blockdevs.filter { !new.blockdevs.contains($0) }.compactMap(Daemon.nodeName)
        let droppedExports = old.exports.filter { !new.exports.contains($0) }
        let addedExports = new.exports.filter { !old.exports.contains($0) }
        // A kept export must not lose its node.
        for spec in new.exports where old.exports.contains(spec) && droppedNodes.contains(spec.nodeName) {
            throw OptionError("reload: export '\(spec.id)' is unchanged but its node '\(spec.nodeName)' changes; change or remove the export too")
        }
        let added = zip(new.blockdevs, new.blockdevLocations).filter { !old.blockdevs.contains($0.0) }
        for (blockdev, location) in added {
            do {
                try graph.check(blockdev)
            } catch {
                throw OptionError("reload: \(error.at(location).message)")
            }
        }
        applyThrottleGroups(new.throttleGroups)
        // Credentials are read again (new connections use them; established ones keep theirs).
        try applySecurityObjects(new.securityObjects, removing: old.securityObjects)
        try applyServerTLS(new.servers)
        for spec in droppedExports { removeExport(spec.id) }
        for name in droppedNodes.reversed() {
            do {
                try graph.remove(name)
                nodeDefinitions.removeValue(forKey: name)
                Log.info("node '\(name)' closed")
            } catch {
                Log.error("reload: \(error.message)")
            }
        }
        var failures: [String] = []
        for (blockdev, location) in added {
            do {
                try openNode(blockdev, location: location)
            } catch {
                failures.append(error.message)
            }
        }
        for spec in addedExports {
            do {
                try addConfiguredExport(spec)
            } catch {
                failures.append(error.message)
            }
        }
        if new.metrics != old.metrics { failures += reloadMetricsEndpoint(new.metrics) }
        for address in oldAddresses where !newAddresses.contains(address) { server.stopListening(on: address) }
        for address in newAddresses where !oldAddresses.contains(address) {
            do {
                try server.listen(on: address)
            } catch {
                failures.append(error.message)
            }
        }
        configuration = new
        if !failures.isEmpty {
            throw OptionError("reload: " + failures.joined(separator: "; "))
        }
    }

    /// Drains the connections and flushes and closes every node.
    public func stop() {
        for job in jobs.all { job.cancelAndWait() }
        metricsServer?.stop()
        monitor?.emit(ShutdownEvent())
        monitor?.shutdown()
        releaseWaitingRequests()
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

    /// Lets every request that waits for a paused device or a throttle group go, so that the
    /// connections can drain at shutdown.
    private func releaseWaitingRequests() {
        let backends = controlLock.withLock { _ in devices.values.map { $0 } + server.exports.all.map(\.backend) }
        for group in graph.throttleGroups.all { group.setLimits(ThrottleLimits()) }
        for backend in backends { backend.resume([.stopped, .ioError]) }
    }

    /// Creates the `--object throttle-group`s that do not exist yet and sets the limits of those that do.
    private func applyThrottleGroups(_ specs: [ThrottleGroupSpec]) {
        for spec in specs {
            let (group, created) = graph.throttleGroups.groupCreating(spec.id, limits: spec.limits, persistent: true)
            if !created && group.limits != spec.limits { group.setLimits(spec.limits) }
        }
    }

    private func openNode(_ blockdev: OptionValue, location: String?) throws(OptionError) {
        let node: BlockNode
        do {
            node = try graph.open(blockdev)
        } catch {
            throw error.at(location)
        }
        nodeDefinitions[node.name] = NodeDefinition(options: blockdev, ownedByMonitor: true)
        Log.debug("opened node '\(node.name)' (\(node.driver.driverName), \(node.length) bytes)")
    }

    private func addConfiguredExport(_ spec: ExportSpec) throws(OptionError) {
        guard graph.node(named: spec.nodeName) != nil else {
            throw OptionError("--export '\(spec.id)': no node named '\(spec.nodeName)'")
        }
        do throws(QAPIError) {
            try addExport(spec, requireServer: false)
        } catch {
            throw OptionError("--export '\(spec.id)': \(error.description)")
        }
    }

    /// The configured addresses with socket-activation names resolved; every passed socket when the
    /// process was socket-activated and no `--nbd-server` names one.
    private func listenAddresses(_ configuration: DaemonConfiguration) throws(OptionError) -> [ListenAddress] {
        var addresses: [ListenAddress] = []
        for spec in configuration.servers {
            if let activation {
                addresses.append(try activation.resolve(spec.address))
            } else if case .fdName(let name) = spec.address {
                throw OptionError("--nbd-server: addr.str='\(name)' names a socket, but none was passed (LISTEN_FDS is not set)")
            } else {
                addresses.append(spec.address)
            }
        }
        if addresses.isEmpty, let activation {
            addresses = activation.sockets.map { .fd($0.fd) }
        }
        return addresses
    }

    private static func nodeName(_ blockdev: OptionValue) -> String? {
        guard case .object(let members) = blockdev, case .string(let name)? = members["node-name"] else { return nil }
        return name
    }
}
