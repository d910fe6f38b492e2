import BlockCore
import JSON
import LogOptionsClock
import MetricsHTTP
import QAPI
import Sockets

extension Daemon {
    /// `x-blockd-metrics-start/stop`, `query-blockd-metrics` (blockd's own).
    func registerMetricsCommands(on table: QMPCommandTable) {
        table.register(XBlockdMetricsStartCommand.self) { [unowned self] arguments throws(QAPIError) in try self.metricsStart(arguments) }
        table.register(XBlockdMetricsStopCommand.self) { [unowned self] _ throws(QAPIError) in try self.metricsStop() }
        table.register(QueryBlockdMetricsCommand.self) { [unowned self] _ throws(QAPIError) in try self.queryBlockdMetrics() }
    }

    /// `x-blockd-metrics-start`: starts the metrics endpoint.
    func metricsStart(_ arguments: XBlockdMetricsStartArguments) throws(QAPIError) -> QAPIEmpty {
        let address = try Daemon.socketAddress(arguments.addr)
        switch address {
        case .inet, .unix: break
        case .fd, .fdName: throw .generic("the metrics endpoint listens on inet or unix addresses only")
        }
        return try locked { () throws(QAPIError) in
            guard metricsServer == nil else { throw .generic("the metrics endpoint already runs on \(metricsServer!.address)") }
            do throws(OptionError) {
                try startMetricsEndpoint(at: address)
            } catch {
                throw error.qmp
            }
            return QAPIEmpty()
        }
    }

    /// `x-blockd-metrics-stop`: stops the metrics endpoint.
    func metricsStop() throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            guard let running = metricsServer else { throw .generic("the metrics endpoint does not run") }
            running.stop()
            metricsServer = nil
            return QAPIEmpty()
        }
    }

    /// `query-blockd-metrics`: describes the metrics endpoint.
    func queryBlockdMetrics() throws(QAPIError) -> BlockdMetricsInfo {
        try locked { () throws(QAPIError) in
            guard let running = metricsServer else { return BlockdMetricsInfo(active: false, scrapes: 0) }
            return BlockdMetricsInfo(active: true, address: running.address.description, port: running.boundPort.map(Int64.init),
                                     scrapes: Int64(running.scrapes))
        }
    }

    /// Binds and starts the endpoint (the caller holds the control lock, or nothing runs yet).
    func startMetricsEndpoint(at address: ListenAddress) throws(OptionError) {
        let box = WeakDaemon(self)
        let endpoint = try MetricsHTTPServer(address: address) { box.daemon?.renderMetrics() ?? [] }
        endpoint.start()
        metricsServer = endpoint
        Log.info("metrics: serving GET /metrics on \(address)\(endpoint.boundPort.map { " (port \($0))" } ?? "")")
    }

    /// A reload changed the `metrics` line: stops the old endpoint, starts the new one; the failure, if any.
    func reloadMetricsEndpoint(_ address: ListenAddress?) -> [String] {
        metricsServer?.stop()
        metricsServer = nil
        guard let address else { return [] }
        do {
            try startMetricsEndpoint(at: address)
            return []
        } catch {
            return [error.message]
        }
    }

    /// The metrics page: the lists copied under the control lock, the counters read after.
    func renderMetrics() -> [UInt8] {
        let inventory = controlLock.withLock { _ in
            MetricsCollector.Inventory(
                exports: server.exports.all, devices: devices.sorted { $0.key < $1.key }.map { ($0.key, $0.value) },
                nodes: graph.allNodes, jobs: jobs.all, throttleGroups: graph.throttleGroups.all, server: server,
                scrapes: metricsServer?.scrapes ?? 0)
        }
        return MetricsCollector.render(inventory)
    }
}

/// The endpoint's way back to the daemon, without keeping it alive.
private final class WeakDaemon: @unchecked Sendable {
    weak var daemon: Daemon?
    init(_ daemon: Daemon) { self.daemon = daemon }
}
