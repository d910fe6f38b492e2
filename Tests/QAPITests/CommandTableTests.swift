import JSON
import Synchronization
import XCTest

import QAPI

/// Collects what handlers saw; handlers are `@Sendable`, so the list sits behind a lock.
private final class Recorder<Value: Sendable>: Sendable {
    private let list = Mutex<[Value]>([])

    func append(_ value: Value) { list.withLock { $0.append(value) } }

    var values: [Value] { list.withLock { $0 } }
}

final class CommandTableTests: XCTestCase {
    func testDispatchDecodesArgumentsAndEncodesTheResult() throws {
        let table = QMPCommandTable()
        table.register(QueryBlockstatsCommand.self) { arguments in
            [BlockStats(device: arguments.queryNodes == true ? nil : "drive0",
                        stats: BlockDeviceStats(
                            rdBytes: 1, wrBytes: 2, unmapBytes: 0, rdOperations: 3, wrOperations: 4, flushOperations: 5,
                            unmapOperations: 0, flushTotalTimeNs: 6, wrTotalTimeNs: 7, rdTotalTimeNs: 8,
                            unmapTotalTimeNs: 0, wrHighestOffset: 9, rdMerged: 0, wrMerged: 0, unmapMerged: 0,
                            failedRdOperations: 0, failedWrOperations: 0, failedFlushOperations: 0,
                            failedUnmapOperations: 0, invalidRdOperations: 0, invalidWrOperations: 0,
                            invalidFlushOperations: 0, invalidUnmapOperations: 0, accountInvalid: true,
                            accountFailed: true, timedStats: []))]
        }
        let result = try table.dispatch("query-blockstats", arguments: nil)
        guard case .array(let items) = result else { return XCTFail("not an array: \(result)") }
        XCTAssertEqual(items.first?["device"], .string("drive0"))
        XCTAssertEqual(items.first?["stats"]?["rd_bytes"], .integer(1))

        let nodes = try table.dispatch("query-blockstats", arguments: json(#"{"query-nodes": true}"#))
        guard case .array(let nodeItems) = nodes else { return XCTFail("not an array: \(nodes)") }
        XCTAssertEqual(nodeItems.count, 1)
        XCTAssertNil(nodeItems.first?["device"])
    }

    func testCommandsWithoutResultAnswerAnEmptyObject() throws {
        let table = QMPCommandTable()
        let seen = Recorder<String>()
        table.register(BlockJobSetSpeedCommand.self) { arguments in
            seen.append("\(arguments.device)=\(arguments.speed)")
            return QAPIEmpty()
        }
        XCTAssertEqual(try table.dispatch("block-job-set-speed", arguments: json(#"{"device": "j", "speed": 9}"#)),
                       .object([:]))
        XCTAssertEqual(seen.values, ["j=9"])
    }

    func testDecodingErrorsComeBeforeTheHandler() {
        let table = QMPCommandTable()
        table.register(BlockJobSetSpeedCommand.self) { _ in
            XCTFail("handler ran")
            return QAPIEmpty()
        }
        XCTAssertThrowsError(try table.dispatch("block-job-set-speed", arguments: json(#"{"device": "j"}"#))) {
            XCTAssertEqual(($0 as? QAPIError)?.description, "Parameter 'speed' is missing")
        }
        XCTAssertThrowsError(try table.dispatch("block-job-set-speed", arguments: .array([]))) {
            XCTAssertEqual(($0 as? QAPIError)?.description, "QMP input member 'arguments' must be an object")
        }
    }

    func testHandlerErrorsPassThrough() {
        let table = QMPCommandTable()
        table.register(BlockJobCancelCommand.self) { arguments throws(QAPIError) in
            throw .noActiveBlockJob(arguments.device)
        }
        XCTAssertThrowsError(try table.dispatch("block-job-cancel", arguments: json(#"{"device": "d0"}"#))) {
            let error = $0 as? QAPIError
            XCTAssertEqual(error?.errorClass, .deviceNotActive)
            XCTAssertEqual(error?.description, "No active block job on device 'd0'")
        }
    }

    func testUnknownCommand() {
        let table = QMPCommandTable()
        XCTAssertThrowsError(try table.dispatch("no-such-command", arguments: nil)) {
            let error = $0 as? QAPIError
            XCTAssertEqual(error?.errorClass, .commandNotFound)
            XCTAssertEqual(error?.description, "The command no-such-command has not been found")
        }
    }

    func testEmptyArgumentsRejectMembers() {
        let table = QMPCommandTable()
        table.register(QueryBlockCommand.self) { _ in [] }
        XCTAssertEqual(try table.dispatch("query-block", arguments: nil), .array([]))
        XCTAssertEqual(try table.dispatch("query-block", arguments: .object([:])), .array([]))
        XCTAssertThrowsError(try table.dispatch("query-block", arguments: json(#"{"device": "x"}"#))) {
            XCTAssertEqual(($0 as? QAPIError)?.description, "Parameter 'device' is unexpected")
        }
        XCTAssertEqual(decodingError(QAPIEmpty.self, #"{"b": 1, "a": 2}"#)?.description, "Parameter 'a' is unexpected")
        XCTAssertEqual(QAPIEmpty().json, .object([:]))
    }

    func testPassthroughArguments() throws {
        let table = QMPCommandTable()
        let seen = Recorder<JSONValue>()
        table.register(BlockdevAddCommand.self) { options in
            seen.append(options)
            return QAPIEmpty()
        }
        let modern = json(#"{"driver": "null-co", "node-name": "n0", "size": 4096}"#)
        let legacy = json(#"{"options": {"driver": "null-co", "node-name": "n0"}}"#)
        _ = try table.dispatch("blockdev-add", arguments: modern)
        _ = try table.dispatch("blockdev-add", arguments: legacy)
        XCTAssertEqual(seen.values, [modern, legacy])
    }

    func testRegisteredNames() {
        let table = QMPCommandTable()
        table.register(QuitCommand.self) { _ in QAPIEmpty() }
        table.register(QueryVersionCommand.self) { _ in
            VersionInfo(qemu: VersionTriple(major: 2, minor: 6, micro: 0), package: "blockd")
        }
        table.register(ContCommand.self) { _ in QAPIEmpty() }
        XCTAssertEqual(table.registeredNames, ["cont", "query-version", "quit"])
        XCTAssertTrue(table.contains("quit"))
        table.unregister("quit")
        XCTAssertEqual(table.registeredNames, ["cont", "query-version"])
    }

    func testCommandListIsComplete() {
        let names = QAPICommands.all.map { $0.name }
        XCTAssertEqual(Set(names).count, names.count)
        for name in ["qmp_capabilities", "query-version", "query-commands", "query-qmp-schema", "quit", "cont",
                     "stop", "query-block", "blockdev-add", "x-blockdev-del", "blockdev-del", "nbd-server-start",
                     "nbd-server-add", "nbd-server-remove", "nbd-server-stop", "block-export-add",
                     "block-export-del", "query-block-exports", "block-set-write-threshold"] {
            XCTAssertTrue(names.contains(name), name)
        }
        XCTAssertEqual(NbdServerRemoveCommand.name, "nbd-server-remove")
        XCTAssertTrue(NbdServerRemoveCommand.Arguments.self == NbdServerRemoveArguments.self)
        XCTAssertTrue(DriveBackupCommand.Arguments.self == DriveBackup.self)
        XCTAssertTrue(QueryBlockCommand.Result.self == [BlockInfo].self)
        XCTAssertTrue(QueryQmpSchemaCommand.Result.self == [JSONValue].self)
    }
}
