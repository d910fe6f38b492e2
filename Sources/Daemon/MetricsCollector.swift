import BlockCore
import Exports
import Jobs
import Prometheus
import Version

/// Builds the metrics page at scrape time: the daemon's lists are copied under the control lock,
/// then every counter is read from the atomics the data path already keeps (as query-blockstats
/// reads them) into a fresh swift-prometheus registry, which renders the exposition format. Nothing
/// is added to the request path but the latency buckets of `LatencyHistogram`.
struct MetricsCollector {
    /// The registry of this one scrape.
    private let registry = PrometheusCollectorRegistry()

    /// What the daemon holds at the moment of the scrape.
    struct Inventory {
        var exports: [NBDExport]
        var devices: [(name: String, backend: BlockBackend)]
        var nodes: [BlockNode]
        var jobs: [Job]
        var throttleGroups: [ThrottleGroup]
        var server: NBDServer
        var scrapes: Int
    }

    /// The exposition text for `inventory`.
    static func render(_ inventory: Inventory) -> [UInt8] {
        let collector = MetricsCollector()
        collector.collect(inventory)
        return collector.registry.emitToBuffer()
    }

    /// The descriptor of a full metric name (the name carries its unit and `_total` itself).
    private func descriptor(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    private func counter(_ name: String, _ help: String, _ labels: [(String, String)], _ value: UInt64) {
        registry.makeCounter(descriptor: descriptor(name, help), labels: labels).increment(by: Int64(clamping: value))
    }

    private func seconds(_ name: String, _ help: String, _ labels: [(String, String)], nanoseconds: UInt64) {
        registry.makeCounter(descriptor: descriptor(name, help), labels: labels).increment(by: Double(nanoseconds) / 1e9)
    }

    private func gauge(_ name: String, _ help: String, _ labels: [(String, String)], _ value: Double) {
        registry.makeGauge(descriptor: descriptor(name, help), labels: labels).set(value)
    }

    private func collect(_ inventory: Inventory) {
        gauge("blockd_build_info", "blockd's version; always 1.", [("version", BlockdVersion.string)], 1)
        counter("blockd_metrics_scrapes_total", "GET /metrics requests answered before this one.", [("endpoint", "http")], UInt64(inventory.scrapes))
        gauge("blockd_nbd_clients", "NBD connections open now, in the handshake or attached to an export.", [("server", "nbd")],
              Double(inventory.server.connectionCount))
        for (reason, count) in inventory.server.handshakeFailures.all {
            counter("blockd_nbd_handshake_failures_total", "NBD handshakes that ended without an export, by reason.",
                    [("reason", reason.rawValue)], count)
        }
        for export in inventory.exports {
            let labels = [("export", export.id)]
            gauge("blockd_export_info", "One per export: its NBD name, node and whether it is writable; always 1.",
                  labels + [("name", export.name), ("node", export.medium?.name ?? ""), ("writable", export.writable ? "true" : "false")], 1)
            gauge("blockd_export_clients", "NBD clients attached to the export now.", labels,
                  Double(inventory.server.clientCount(exportID: export.id)))
            backend("blockd_export", labels, export.backend)
        }
        for device in inventory.devices {
            backend("blockd_device", [("device", device.name)], device.backend)
        }
        for node in inventory.nodes { self.node(node) }
        for group in inventory.throttleGroups { throttle(group) }
        for job in inventory.jobs { self.job(job) }
    }

    /// The counters of one BlockBackend (an export's or a named device's): query-blockstats' figures,
    /// in-flight requests, pause state and latency buckets.
    private func backend(_ prefix: String, _ labels: [(String, String)], _ backend: BlockBackend) {
        let stats = backend.stats.snapshot()
        func value(_ list: [UInt64], _ kind: IOKind) -> UInt64 { list[kind.rawValue] }
        counter("\(prefix)_read_bytes_total", "Bytes read (rd_bytes).", labels, value(stats.bytes, .read))
        counter("\(prefix)_written_bytes_total", "Bytes written (wr_bytes).", labels, value(stats.bytes, .write))
        counter("\(prefix)_discarded_bytes_total", "Bytes discarded (unmap_bytes).", labels, value(stats.bytes, .unmap))
        counter("\(prefix)_reads_completed_total", "Reads completed (rd_operations).", labels, value(stats.operations, .read))
        counter("\(prefix)_writes_completed_total", "Writes and zero-writes completed (wr_operations).", labels, value(stats.operations, .write))
        counter("\(prefix)_flush_requests_total", "Flushes completed (flush_operations).", labels, value(stats.operations, .flush))
        counter("\(prefix)_discards_completed_total", "Discards completed (unmap_operations).", labels, value(stats.operations, .unmap))
        seconds("\(prefix)_read_time_seconds_total", "Seconds spent in reads (rd_total_time_ns).", labels, nanoseconds: value(stats.totalNanoseconds, .read))
        seconds("\(prefix)_write_time_seconds_total", "Seconds spent in writes (wr_total_time_ns).", labels, nanoseconds: value(stats.totalNanoseconds, .write))
        seconds("\(prefix)_flush_requests_time_seconds_total", "Seconds spent in flushes (flush_total_time_ns).", labels,
                nanoseconds: value(stats.totalNanoseconds, .flush))
        seconds("\(prefix)_discard_time_seconds_total", "Seconds spent in discards (unmap_total_time_ns).", labels,
                nanoseconds: value(stats.totalNanoseconds, .unmap))
        gauge("\(prefix)_write_highest_offset_bytes", "The end of the furthest write (wr_highest_offset).", labels, Double(stats.highestWriteOffset))
        gauge("\(prefix)_paused", "1 while the device's requests wait for cont (werror/rerror stop, QMP stop).", labels,
              backend.pauseReasons.isEmpty ? 0 : 1)
        gauge("\(prefix)_io_error", "1 when the device's io-status is failed or nospace.", labels, backend.ioStatus == .ok ? 0 : 1)
        let buckets = LatencyHistogram.upperBounds.map { String(Double($0) / 1e9) } + ["+Inf"]
        for kind in IOKind.allCases {
            let op = [("op", MetricsCollector.opName(kind))]
            counter("\(prefix)_failed_requests_total", "Requests that failed (failed_*_operations).", labels + op, value(stats.failed, kind))
            counter("\(prefix)_invalid_requests_total", "Requests refused as invalid (invalid_*_operations).", labels + op, value(stats.invalid, kind))
            gauge("\(prefix)_requests_in_flight", "Requests started and not finished.", labels + op, Double(backend.stats.inFlight(kind)))
            var cumulative: UInt64 = 0
            for (bound, count) in zip(buckets, backend.stats.latency.counts(kind)) {
                cumulative += count
                counter("\(prefix)_request_duration_seconds_bucket",
                        "Requests that took at most le seconds (cumulative buckets of a latency histogram, for histogram_quantile).",
                        labels + op + [("le", bound)], cumulative)
            }
        }
    }

    private func node(_ node: BlockNode) {
        let labels = [("node", node.name)]
        gauge("blockd_node_info", "One per node: its driver; always 1.", labels + [("driver", node.driver.driverName)], 1)
        gauge("blockd_node_size_bytes", "The node's length.", labels, Double(node.length))
        gauge("blockd_node_write_highest_offset_bytes", "The end of the furthest write to the node.", labels, Double(node.highestWriteOffset))
        gauge("blockd_node_write_threshold_bytes", "The write threshold armed on the node; 0 when none is.", labels, Double(node.writeThreshold))
        let discards = node.discardCounters
        counter("blockd_node_discards_completed_total", "Discards the file driver passed to the host (discard-nb-ok).", labels, discards.succeeded)
        counter("blockd_node_discards_failed_total", "Discards the host refused (discard-nb-failed).", labels, discards.failed)
        counter("blockd_node_discarded_bytes_total", "Bytes the host discarded (discard-bytes-ok).", labels, discards.bytes)
    }

    private func throttle(_ group: ThrottleGroup) {
        let labels = [("group", group.name)]
        counter("blockd_throttle_waits_total", "Requests that had to wait for the group's limits.", labels, group.waits.load(ordering: .relaxed))
        seconds("blockd_throttle_wait_seconds_total", "Seconds requests spent waiting for the group's limits.", labels,
                nanoseconds: group.waitNanoseconds.load(ordering: .relaxed))
        gauge("blockd_throttle_members", "Devices and throttle nodes in the group.", labels, Double(group.memberCount))
        let limits = group.limits
        for kind in ThrottleLimits.Kind.allCases {
            let limit = limits.limits[kind.rawValue]
            let name = MetricsCollector.limitName(kind)
            gauge("blockd_throttle_limit", "The group's average limit (bytes or requests per second); 0 for none.",
                  labels + [("limit", name)], Double(limit.average))
            gauge("blockd_throttle_burst_limit", "The group's burst limit (bytes or requests per second); 0 for none.",
                  labels + [("limit", name)], Double(limit.burst))
        }
    }

    private func job(_ job: Job) {
        let labels = [("job", job.id), ("type", job.kind.rawValue)]
        let progress = job.progressValues
        gauge("blockd_job_progress_current_bytes", "Work the job has done (current-progress).", labels, Double(progress.current))
        gauge("blockd_job_progress_total_bytes", "Work the job expects in all (total-progress).", labels, Double(progress.total))
        gauge("blockd_job_info", "One per job: its status; always 1.", labels + [("status", job.status.rawValue)], 1)
    }

    private static func opName(_ kind: IOKind) -> String {
        switch kind {
        case .read: return "read"
        case .write: return "write"
        case .flush: return "flush"
        case .unmap: return "discard"
        }
    }

    private static func limitName(_ kind: ThrottleLimits.Kind) -> String {
        switch kind {
        case .bpsTotal: return "bps-total"
        case .bpsRead: return "bps-read"
        case .bpsWrite: return "bps-write"
        case .iopsTotal: return "iops-total"
        case .iopsRead: return "iops-read"
        case .iopsWrite: return "iops-write"
        }
    }
}
