import BlockCore
import Exports
import JSON
import QAPI

extension Daemon {
    /// `query-block`, `query-blockstats`, `query-block-jobs`.
    func registerQueryCommands(on table: QMPCommandTable) {
        table.register(QueryBlockCommand.self) { [unowned self] _ throws(QAPIError) in
            try locked { () throws(QAPIError) in allDevices().map { device in
                BlockInfo(device: device.name, type: "unknown", removable: false, locked: false,
                          inserted: blockDeviceInfo(device.node), ioStatus: .ok)
            } }
        }
        table.register(QueryBlockstatsCommand.self) { [unowned self] arguments throws(QAPIError) in
            try locked { () throws(QAPIError) in
                if arguments.queryNodes == true {
                    return graph.allNodes.filter { !$0.name.hasPrefix("#") }.map(nodeStatistics)
                }
                return allDevices().map { device in
                    let children = nodeStatistics(device.node)
                    return QAPI.BlockStats(
                        device: device.name, nodeName: device.node.name, stats: Daemon.deviceStats(device.stats.snapshot()),
                        parent: children.parent, backing: children.backing)
                }
            }
        }
        table.register(QueryBlockJobsCommand.self) { _ throws(QAPIError) in
            []  // blockd has no block jobs yet, so there is never one running.
        }
    }

    /// A node's statistics: only `wr_highest_offset` is counted per node (the rest is per device),
    /// with its `file` child as `parent` and its `backing` child, as QEMU reports them.
    func nodeStatistics(_ node: BlockNode) -> QAPI.BlockStats {
        var stats = Daemon.deviceStats(BlockCore.BlockStats().snapshot())
        stats.wrHighestOffset = Int64(clamping: node.highestWriteOffset)
        stats.idleTimeNs = nil
        let file = node.children.first { $0.role == "file" }?.node
        let backing = node.children.first { $0.role == "backing" }?.node
        return QAPI.BlockStats(
            nodeName: node.name.hasPrefix("#") ? nil : node.name, stats: stats,
            parent: file.map(nodeStatistics), backing: backing.map(nodeStatistics))
    }

    /// A device as the query commands list it: a named one from blockdev-add, or an export's own.
    struct DeviceView {
        var name: String
        var node: BlockNode
        var stats: BlockCore.BlockStats
    }

    /// Every device: the named ones, then one per export whose node has no named device.
    func allDevices() -> [DeviceView] {
        var views = devices.sorted { $0.key < $1.key }.map { DeviceView(name: $0.key, node: $0.value.node, stats: $0.value.stats) }
        for export in server.exports.all where !devices.values.contains(where: { $0.node === export.node }) {
            views.append(DeviceView(name: export.id, node: export.node, stats: export.stats))
        }
        return views
    }

    /// The counters of a device in BlockDeviceStats form.
    static func deviceStats(_ snapshot: BlockStatsSnapshot) -> BlockDeviceStats {
        func value(_ list: [UInt64], _ kind: IOKind) -> Int64 { Int64(clamping: list[kind.rawValue]) }
        let timed = snapshot.timed.map { report in
            BlockDeviceTimedStats(
                intervalLength: Int64(report.interval),
                minRdLatencyNs: Int64(clamping: report.minimum[0]), maxRdLatencyNs: Int64(clamping: report.maximum[0]),
                avgRdLatencyNs: Int64(clamping: report.average[0]),
                minWrLatencyNs: Int64(clamping: report.minimum[1]), maxWrLatencyNs: Int64(clamping: report.maximum[1]),
                avgWrLatencyNs: Int64(clamping: report.average[1]),
                minFlushLatencyNs: Int64(clamping: report.minimum[2]), maxFlushLatencyNs: Int64(clamping: report.maximum[2]),
                avgFlushLatencyNs: Int64(clamping: report.average[2]),
                avgRdQueueDepth: report.readQueueDepth, avgWrQueueDepth: report.writeQueueDepth)
        }
        return BlockDeviceStats(
            rdBytes: value(snapshot.bytes, .read), wrBytes: value(snapshot.bytes, .write),
            rdOperations: value(snapshot.operations, .read), wrOperations: value(snapshot.operations, .write),
            flushOperations: value(snapshot.operations, .flush),
            flushTotalTimeNs: value(snapshot.totalNanoseconds, .flush), wrTotalTimeNs: value(snapshot.totalNanoseconds, .write),
            rdTotalTimeNs: value(snapshot.totalNanoseconds, .read),
            wrHighestOffset: Int64(clamping: snapshot.highestWriteOffset),
            rdMerged: 0, wrMerged: 0,  // blockd never merges requests
            idleTimeNs: snapshot.idleNanoseconds.map { Int64(clamping: $0) },
            failedRdOperations: value(snapshot.failed, .read), failedWrOperations: value(snapshot.failed, .write),
            failedFlushOperations: value(snapshot.failed, .flush),
            invalidRdOperations: value(snapshot.invalid, .read), invalidWrOperations: value(snapshot.invalid, .write),
            invalidFlushOperations: value(snapshot.invalid, .flush),
            accountInvalid: snapshot.accountInvalid, accountFailed: snapshot.accountFailed, timedStats: timed)
    }
}
