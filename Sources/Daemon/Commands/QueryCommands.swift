import BlockCore
import Exports
import JSON
import QAPI

extension Daemon {
    /// `query-block`, `query-blockstats` (the job queries are in JobCommands.swift).
    func registerQueryCommands(on table: QMPCommandTable) {
        table.register(QueryBlockCommand.self) { [unowned self] arguments throws(QAPIError) in try self.queryBlock(arguments) }
        table.register(QueryBlockstatsCommand.self) { [unowned self] arguments throws(QAPIError) in try self.queryBlockstats(arguments) }
    }

    /// `query-block`: lists every device with its medium.
    func queryBlock(_ arguments: QueryBlockArguments) throws(QAPIError) -> [BlockInfo] {
        try locked { () throws(QAPIError) in
            allDevices(includingExports: arguments.xBlockdExports ?? false).map(blockInfo)
        }
    }

    /// `query-blockstats`: reports I/O statistics.
    func queryBlockstats(_ arguments: QueryBlockstatsArguments) throws(QAPIError) -> [QAPI.BlockStats] {
        try locked { () throws(QAPIError) in
            if arguments.queryNodes == true {
                return graph.allNodes.map { nodeStatistics($0, deviceLevel: false) }
            }
            return allDevices(includingExports: arguments.xBlockdExports ?? false).map(deviceStatistics)
        }
    }

    /// A device as query-block describes it. Every device has a tray that no guest locks (the
    /// exports stand for the guest device).
    func blockInfo(_ device: DeviceView) -> BlockInfo {
        BlockInfo(device: device.name, type: "unknown", removable: device.backend.isRemovable, locked: false,
                  inserted: device.backend.medium.map { blockDeviceInfo($0, device: device.backend) },
                  trayOpen: device.backend.isTrayOpen, ioStatus: Daemon.ioStatus(device.backend.ioStatus),
                  dirtyBitmaps: device.backend.medium.flatMap { dirtyBitmapInfo($0) })
    }

    /// A device's statistics: its counters, with those of its medium's chain below.
    func deviceStatistics(_ device: DeviceView) -> QAPI.BlockStats {
        var entry = device.backend.medium.map { nodeStatistics($0, deviceLevel: true) }
            ?? QAPI.BlockStats(stats: Daemon.deviceStats(BlockCore.BlockStats().snapshot()))
        let highest = entry.stats.wrHighestOffset
        entry.device = device.name
        entry.stats = Daemon.deviceStats(device.backend.stats.snapshot())
        if device.backend.medium != nil { entry.stats.wrHighestOffset = highest }  // QEMU takes it from the node
        return entry
    }

    /// A node's statistics as QEMU's `bdrv_query_bds_stats` reports them: per node only
    /// `wr_highest_offset` and the file driver's discard counters are kept (the rest is per
    /// device), with the node's primary or only data child as `parent` and, for a device's chain,
    /// its backing file or filtered child as `backing`.
    func nodeStatistics(_ node: BlockNode, deviceLevel: Bool) -> QAPI.BlockStats {
        var stats = Daemon.deviceStats(BlockCore.BlockStats().snapshot())
        stats.wrHighestOffset = Int64(clamping: node.highestWriteOffset)
        stats.idleTimeNs = nil
        stats.accountInvalid = false
        stats.accountFailed = false
        var entry = QAPI.BlockStats(nodeName: node.name, stats: stats)
        if ["file", "host_device", "host_cdrom"].contains(node.driver.driverName) {
            let discards = node.discardCounters
            entry.driverSpecific = .object([
                "driver": .string(node.driver.driverName),
                "discard-nb-ok": .integer(Int64(clamping: discards.succeeded)),
                "discard-nb-failed": .integer(Int64(clamping: discards.failed)),
                "discard-bytes-ok": .integer(Int64(clamping: discards.bytes)),
            ])
        }
        if let parent = statisticsParent(of: node) { entry.parent = nodeStatistics(parent, deviceLevel: deviceLevel) }
        if deviceLevel, let below = filteredOrBackingChild(of: node) { entry.backing = nodeStatistics(below, deviceLevel: true) }
        return entry
    }

    /// QEMU's choice of `parent`: the primary child when it holds data, else the one child that does.
    private func statisticsParent(of node: BlockNode) -> BlockNode? {
        if let primary = node.children.first(where: { $0.role == "file" }) { return primary.node }
        let data = node.children.filter { $0.role != "backing" }
        return data.count == 1 ? data[0].node : nil
    }

    /// A device as the query commands list it: a named one from blockdev-add, or an export's own,
    /// named by the export's id.
    struct DeviceView {
        var name: String
        var backend: BlockBackend
    }

    /// Every device: the named ones, then the anonymous one of each export of a node no device holds.
    /// The query commands list the anonymous ones only when asked (`includingExports`), as
    /// qemu-storage-daemon does not list them.
    func allDevices(includingExports: Bool = true) -> [DeviceView] {
        var views = devices.sorted { $0.key < $1.key }.map { DeviceView(name: $0.key, backend: $0.value) }
        for export in server.exports.all where includingExports && export.backend.id == nil {
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
            unmapBytes: value(snapshot.bytes, .unmap),
            rdOperations: value(snapshot.operations, .read), wrOperations: value(snapshot.operations, .write),
            flushOperations: value(snapshot.operations, .flush), unmapOperations: value(snapshot.operations, .unmap),
            flushTotalTimeNs: value(snapshot.totalNanoseconds, .flush), wrTotalTimeNs: value(snapshot.totalNanoseconds, .write),
            rdTotalTimeNs: value(snapshot.totalNanoseconds, .read), unmapTotalTimeNs: value(snapshot.totalNanoseconds, .unmap),
            wrHighestOffset: Int64(clamping: snapshot.highestWriteOffset),
            rdMerged: 0, wrMerged: 0, unmapMerged: 0,  // blockd never merges requests
            idleTimeNs: snapshot.idleNanoseconds.map { Int64(clamping: $0) },
            failedRdOperations: value(snapshot.failed, .read), failedWrOperations: value(snapshot.failed, .write),
            failedFlushOperations: value(snapshot.failed, .flush), failedUnmapOperations: value(snapshot.failed, .unmap),
            invalidRdOperations: value(snapshot.invalid, .read), invalidWrOperations: value(snapshot.invalid, .write),
            invalidFlushOperations: value(snapshot.invalid, .flush), invalidUnmapOperations: value(snapshot.invalid, .unmap),
            accountInvalid: snapshot.accountInvalid, accountFailed: snapshot.accountFailed, timedStats: timed)
    }
}
