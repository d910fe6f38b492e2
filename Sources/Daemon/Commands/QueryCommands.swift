import BlockCore
import Exports
import JSON
import QAPI

extension Daemon {
    /// `query-block`, `query-blockstats`, `query-block-jobs`.
    func registerQueryCommands(on table: QMPCommandTable) {
        table.register(QueryBlockCommand.self) { [unowned self] _ throws(QAPIError) in
            try locked { () throws(QAPIError) in allDevices().map { device in
                // Every device has a tray that no guest locks (the exports stand for the guest device).
                BlockInfo(device: device.name, type: "unknown", removable: device.backend.isRemovable, locked: false,
                          inserted: device.backend.medium.map { blockDeviceInfo($0, device: device.backend) },
                          trayOpen: device.backend.isTrayOpen, ioStatus: Daemon.ioStatus(device.backend.ioStatus))
            } }
        }
        table.register(QueryBlockstatsCommand.self) { [unowned self] arguments throws(QAPIError) in
            try locked { () throws(QAPIError) in
                if arguments.queryNodes == true {
                    return graph.allNodes.filter { !$0.name.hasPrefix("#") }.map(nodeStatistics)
                }
                return allDevices().map { device in
                    let medium = device.backend.medium
                    let children = medium.map(nodeStatistics)
                    return QAPI.BlockStats(
                        device: device.name, nodeName: medium?.name, stats: Daemon.deviceStats(device.backend.stats.snapshot()),
                        parent: children?.parent, backing: children?.backing)
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

    /// A device as the query commands list it: a named one from blockdev-add, or an export's own,
    /// named by the export's id.
    struct DeviceView {
        var name: String
        var backend: BlockBackend
    }

    /// Every device: the named ones, then the anonymous one of each export of a node no device holds.
    func allDevices() -> [DeviceView] {
        var views = devices.sorted { $0.key < $1.key }.map { DeviceView(name: $0.key, backend: $0.value) }
        for export in server.exports.all where export.backend.id == nil {
            views.append(DeviceView(name: export.id, backend: export.backend))
        }
        return views
    }

    /// The device named `name`: one from blockdev-add, or the one the export with that id serves.
    func backend(_ name: String) throws(QAPIError) -> BlockBackend {
        if let device = devices[name] { return device }
        if let export = server.exports.export(id: name) { return export.backend }
        throw .deviceNotFound(name)
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
