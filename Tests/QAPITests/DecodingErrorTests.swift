import JSON
import XCTest

import QAPI

final class DecodingErrorTests: XCTestCase {
    func testMissingMember() {
        let error = decodingError(BlockJobSetSpeedArguments.self, #"{"device": "drive0"}"#)
        XCTAssertEqual(error?.description, "Parameter 'speed' is missing")
        XCTAssertEqual(error?.errorClass, .genericError)
    }

    func testMissingMembersAreReportedInSchemaOrder() {
        let error = decodingError(BlockJobSetSpeedArguments.self, #"{"bogus": 1}"#)
        XCTAssertEqual(error?.description, "Parameter 'device' is missing")
    }

    func testWrongTypes() {
        XCTAssertEqual(
            decodingError(BlockJobSetSpeedArguments.self, #"{"device": "d", "speed": "fast"}"#)?.description,
            "Invalid parameter type for 'speed', expected: integer")
        XCTAssertEqual(
            decodingError(BlockJobSetSpeedArguments.self, #"{"device": 7, "speed": 0}"#)?.description,
            "Invalid parameter type for 'device', expected: string")
        XCTAssertEqual(
            decodingError(BlockJobCancelArguments.self, #"{"device": "d", "force": "yes"}"#)?.description,
            "Invalid parameter type for 'force', expected: boolean")
        XCTAssertEqual(
            decodingError(VersionInfo.self, #"{"qemu": "2.6.0", "package": ""}"#)?.description,
            "Invalid parameter type for 'qemu', expected: object")
        XCTAssertEqual(
            decodingError(QmpCapabilitiesArguments.self, #"{"enable": "oob"}"#)?.description,
            "Invalid parameter type for 'enable', expected: array")
        XCTAssertEqual(
            decodingError(BlockStreamArguments.self, #"{"device": "d", "on-error": 1}"#)?.description,
            "Invalid parameter type for 'on-error', expected: string")
    }

    func testFractionIsNotAnInteger() {
        XCTAssertEqual(
            decodingError(BlockJobSetSpeedArguments.self, #"{"device": "d", "speed": 1.5}"#)?.description,
            "Invalid parameter type for 'speed', expected: integer")
    }

    func testNullIsNotAnAbsentOptional() {
        XCTAssertEqual(
            decodingError(BlockJobCancelArguments.self, #"{"device": "d", "force": null}"#)?.description,
            "Invalid parameter type for 'force', expected: boolean")
    }

    func testUnexpectedMember() {
        let error = decodingError(BlockJobPauseArguments.self, #"{"device": "d", "zzz": 1, "extra": true}"#)
        XCTAssertEqual(error?.description, "Parameter 'extra' is unexpected")
    }

    func testBadEnumValue() {
        XCTAssertEqual(
            decodingError(BlockStreamArguments.self, #"{"device": "d", "on-error": "explode"}"#)?.description,
            "Parameter 'on-error' does not accept value 'explode'")
        XCTAssertEqual(
            decodingError(QmpCapabilitiesArguments.self, #"{"enable": ["oob", "bogus"]}"#)?.description,
            "Parameter 'enable[1]' does not accept value 'bogus'")
    }

    func testOutOfRangeIntegers() {
        XCTAssertEqual(
            decodingError(
                DriveMirrorArguments.self,
                #"{"device": "d", "target": "t", "sync": "full", "granularity": 4294967296}"#)?.description,
            "Parameter 'granularity' expects uint32_t")
        XCTAssertEqual(
            decodingError(
                BlockSetWriteThresholdArguments.self, #"{"node-name": "n", "write-threshold": -1}"#)?.description,
            "Parameter 'write-threshold' expects uint64")
        XCTAssertEqual(
            decodingError(
                BlockSetWriteThresholdArguments.self, #"{"node-name": "n", "write-threshold": "big"}"#)?.description,
            "Parameter 'write-threshold' expects uint64")
        XCTAssertEqual(
            decodingError(InetSocketAddress.self, #"{"host": "::", "port": "10809", "to": 65536}"#)?.description,
            "Parameter 'to' expects uint16_t")
        XCTAssertEqual(
            decodingError(NbdServerStartArguments.self, #"{"addr": {}, "max-connections": -1}"#)?.description,
            "Parameter 'max-connections' expects uint32_t")
    }

    func testSmallIntegerTypes() {
        do throws(QAPIError) {
            _ = try Int8(decoding: .integer(200), at: "x")
            XCTFail("accepted 200 as int8")
        } catch {
            XCTAssertEqual(error.description, "Parameter 'x' expects int8_t")
        }
        do throws(QAPIError) {
            _ = try Int32(decoding: .integer(Int64(Int32.min) - 1), at: "a.b")
            XCTFail("accepted a value below Int32.min")
        } catch {
            XCTAssertEqual(error.description, "Parameter 'a.b' expects int32_t")
        }
        XCTAssertEqual(try Int16(decoding: .integer(-32768), at: "x"), Int16.min)
        XCTAssertEqual(try UInt8(decoding: .integer(255), at: "x"), 255)
    }

    func testLargeUnsignedValues() {
        let maximum = decoded(BlockSetWriteThresholdArguments.self,
                              #"{"node-name": "n", "write-threshold": 18446744073709551615}"#)
        XCTAssertEqual(maximum?.writeThreshold, UInt64.max)
        let high = decoded(BlockSetWriteThresholdArguments.self,
                           #"{"node-name": "n", "write-threshold": 9223372036854775808}"#)
        XCTAssertEqual(high?.writeThreshold, 9_223_372_036_854_775_808)
        XCTAssertEqual(
            decodingError(
                BlockSetWriteThresholdArguments.self, #"{"node-name": "n", "write-threshold": 1e3}"#)?.description,
            "Parameter 'write-threshold' expects uint64")
    }

    func testNestedPaths() {
        XCTAssertEqual(
            decodingError(
                ImageInfo.self,
                #"{"filename": "f", "format": "raw", "virtual-size": 1, "snapshots": [{"name": "s"}]}"#)?.description,
            "Parameter 'snapshots[0].id' is missing")
        XCTAssertEqual(
            decodingError(VersionInfo.self, #"{"qemu": {"major": 2, "minor": 6, "micro": "0"}, "package": ""}"#)?
                .description,
            "Invalid parameter type for 'qemu.micro', expected: integer")
        XCTAssertEqual(
            decodingError(VersionInfo.self, #"{"qemu": {"major": 2, "minor": 6, "micro": 0, "nano": 0}, "package": ""}"#)?
                .description,
            "Parameter 'qemu.nano' is unexpected")
        XCTAssertEqual(
            decodingError(
                ImageInfo.self,
                #"{"filename": "f", "format": "raw", "virtual-size": 1, "backing-image": {"filename": "b", "format": "raw"}}"#)?
                .description,
            "Parameter 'backing-image.virtual-size' is missing")
    }

    func testRootMustBeAnObject() {
        XCTAssertEqual(
            decodingError(QAPIEmpty.self, "[]")?.description,
            "Invalid parameter type for '<anonymous>', expected: object")
    }

    func testNumberAcceptsIntegers() {
        let stats = decoded(
            BlockDeviceTimedStats.self,
            """
            {"interval_length": 60, "min_rd_latency_ns": 1, "max_rd_latency_ns": 2, "avg_rd_latency_ns": 3,
             "min_wr_latency_ns": 4, "max_wr_latency_ns": 5, "avg_wr_latency_ns": 6, "min_flush_latency_ns": 7,
             "max_flush_latency_ns": 8, "avg_flush_latency_ns": 9, "avg_rd_queue_depth": 2,
             "avg_wr_queue_depth": 0.5}
            """)
        XCTAssertEqual(stats?.avgRdQueueDepth, 2.0)
        XCTAssertEqual(stats?.avgWrQueueDepth, 0.5)
    }

    func testErrorResponseObject() {
        let error = QAPIError.deviceNotFound("drive9")
        XCTAssertEqual(error.json, .object(["class": .string("DeviceNotFound"), "desc": .string("Device 'drive9' not found")]))
        XCTAssertEqual(QAPIError.noActiveBlockJob("d").errorClass, .deviceNotActive)
        XCTAssertEqual(QAPIError.deviceInUse("d").errorClass.rawValue, "DeviceInUse")
    }
}
