import XCTest

import QAPI

final class DocumentationTests: XCTestCase {
    func testEveryCommandIsDocumented() {
        XCTAssertEqual(QAPIDocumentation.commands.count, QAPICommands.all.count)
        for command in QAPICommands.all {
            let doc = QAPIDocumentation.commands[command.name]
            XCTAssertNotNil(doc, command.name)
            XCTAssertFalse(doc?.summary.isEmpty ?? true, command.name)
        }
    }

    func testArguments() {
        let backup = QAPIDocumentation.commands["drive-backup"]
        XCTAssertEqual(backup?.argumentsType, "DriveBackup")
        XCTAssertEqual(backup?.argument("job-id")?.optional, true)
        XCTAssertEqual(backup?.argument("sync")?.type, "MirrorSyncMode")
        XCTAssertEqual(backup?.argument("sync")?.optional, false)
        XCTAssertEqual(backup?.acceptsOtherArguments, false)

        let stats = QAPIDocumentation.commands["query-blockstats"]
        XCTAssertEqual(stats?.arguments.map(\.name), ["query-nodes", "x-blockd-exports"])
        XCTAssertEqual(stats?.returns, "[BlockStats]")
        XCTAssertNil(stats?.argumentsType)

        XCTAssertEqual(QAPIDocumentation.commands["blockdev-add"]?.acceptsOtherArguments, true)
        XCTAssertEqual(QAPIDocumentation.commands["block-export-add"]?.argument("id")?.optional, false)
        XCTAssertEqual(QAPIDocumentation.commands["quit"]?.arguments, [])
        XCTAssertNil(QAPIDocumentation.commands["quit"]?.returns)
    }

    func testEvents() {
        let event = QAPIDocumentation.events["BLOCK_WRITE_THRESHOLD"]
        XCTAssertEqual(event?.members.map(\.name), ["node-name", "amount-exceeded", "write-threshold"])
        XCTAssertEqual(event?.members.first?.type, "str")
    }
}
