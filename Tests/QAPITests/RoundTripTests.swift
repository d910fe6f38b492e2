import JSON
import XCTest

import QAPI

final class RoundTripTests: XCTestCase {
    private func roundTrip<T: QAPIValue & Equatable>(_ value: T, file: StaticString = #filePath, line: UInt = #line) {
        let text = value.json.serialized()
        XCTAssertEqual(decoded(T.self, text, file: file, line: line), value, file: file, line: line)
    }

    func testStructWithNestedAndRecursiveMembers() {
        let backing = ImageInfo(filename: "base.qcow2", format: "qcow2", virtualSize: 1 << 30)
        let image = ImageInfo(
            filename: "top.qcow2", format: "qcow2", dirtyFlag: false, virtualSize: 1 << 30, clusterSize: 65536,
            snapshots: [SnapshotInfo(id: "1", name: "s1", vmStateSize: 0, dateSec: 10, dateNsec: 0,
                                     vmClockSec: 0, vmClockNsec: 0)],
            backingImage: backing,
            formatSpecific: .object(["type": .string("qcow2"), "data": .object(["compat": .string("1.1")])]))
        roundTrip(image)
        XCTAssertEqual(image.backingImage?.filename, "base.qcow2")
        XCTAssertEqual(image.json["backing-image"]?["filename"], .string("base.qcow2"))
        XCTAssertEqual(image.json["cluster-size"], .integer(65536))
    }

    func testAbsentOptionalsAreOmitted() {
        let info = BlockDirtyInfo(count: 0, granularity: 65536, status: .active, recording: true, busy: false, persistent: false)
        XCTAssertEqual(info.json, json(#"{"count": 0, "granularity": 65536, "status": "active", "recording": true, "busy": false, "persistent": false}"#))
        roundTrip(info)
    }

    func testQueryBlockAnswer() {
        let text = """
            [{"device": "drive0", "type": "unknown", "removable": false, "locked": false,
              "io-status": "ok", "dirty-bitmaps": [],
              "inserted": {"file": "/img/a.raw", "node-name": "n0", "ro": false, "drv": "raw",
                           "backing_file_depth": 0, "encrypted": false, "encryption_key_missing": false,
                           "detect_zeroes": "off", "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0,
                           "iops_rd": 0, "iops_wr": 0, "write_threshold": 0,
                           "image": {"filename": "/img/a.raw", "format": "raw", "virtual-size": 1048576},
                           "cache": {"writeback": true, "direct": true, "no-flush": false}}}]
            """
        guard let blocks = decoded([BlockInfo].self, text) else { return }
        XCTAssertEqual(blocks.count, 1)
        XCTAssertEqual(blocks[0].inserted?.detectZeroes, .off)
        XCTAssertEqual(blocks[0].inserted?.cache.direct, true)
        XCTAssertEqual(blocks[0].ioStatus, .ok)
        XCTAssertEqual(blocks.json, json(text))
    }

    func testEnumsUseWireNames() {
        XCTAssertEqual(BlockdevDriver.nullAio.rawValue, "null-aio")
        XCTAssertEqual(BlockdevDriver.hostCdrom.rawValue, "host_cdrom")
        XCTAssertEqual(BlockdevChangeReadOnlyMode.readOnly.json, .string("read-only"))
        XCTAssertEqual(BlkdebugEvent.l1GrowAllocTable.rawValue, "l1_grow_alloc_table")
        XCTAssertEqual(BlockdevDriver.allCases.count, 30)
        XCTAssertEqual(decoded(MirrorSyncMode.self, #""incremental""#), .incremental)
    }

    func testCommandArgumentsRoundTrip() {
        roundTrip(DriveBackup(jobId: "job0", device: "drive0", target: "/backup.qcow2", sync: .full,
                              onTargetError: .ignore))
        roundTrip(BlockSetIoThrottleArguments(device: "d", bps: 1, bpsRd: 2, bpsWr: 3, iops: 4, iopsRd: 5,
                                              iopsWr: 6, bpsMaxLength: 7, group: "g"))
        roundTrip(NbdServerStartArguments(addr: json(#"{"type": "unix", "data": {"path": "/run/nbd.sock"}}"#),
                                          maxConnections: 4))
    }

    func testIntegersRoundTrip() {
        roundTrip(BlockSetWriteThresholdArguments(nodeName: "n", writeThreshold: 1 << 40))
        XCTAssertEqual(UInt64.max.json, .double(18_446_744_073_709_551_615.0))
        XCTAssertEqual(UInt64(5).json, .integer(5))
    }

    func testEvents() {
        let event = BlockJobCompletedEvent(type: .mirror, device: "drive0", len: 100, offset: 100, speed: 0)
        XCTAssertEqual(BlockJobCompletedEvent.name, "BLOCK_JOB_COMPLETED")
        let message = event.message(seconds: 1, microseconds: 2)
        XCTAssertEqual(message["event"], .string("BLOCK_JOB_COMPLETED"))
        XCTAssertEqual(message["data"]?["type"], .string("mirror"))
        XCTAssertNil(message["data"]?["error"])
        XCTAssertEqual(message["timestamp"]?["microseconds"], .integer(2))
        roundTrip(event)

        XCTAssertEqual(BlockWriteThresholdEvent.name, "BLOCK_WRITE_THRESHOLD")
        XCTAssertEqual(BlockExportDeletedEvent(id: "e0").json, json(#"{"id": "e0"}"#))
        XCTAssertNil(StopEvent().message(seconds: 0, microseconds: 0)["data"])
        XCTAssertFalse(StopEvent.hasData)
    }

    func testUnionsArePassedThrough() {
        let options = json(#"{"driver": "file", "node-name": "n0", "filename": "/img"}"#)
        let value: BlockdevOptions? = decoded(BlockdevOptions.self, options.serialized())
        XCTAssertEqual(value, options)
        let generic = decoded(BlockdevOptionsGenericFormat.self, #"{"file": "n0"}"#)
        XCTAssertEqual(generic?.file, .string("n0"))
    }
}
