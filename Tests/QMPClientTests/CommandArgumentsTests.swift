import JSON
import QMPClient
import XCTest

final class CommandArgumentsTests: XCTestCase {
    func testValuesAreJSONUnlessTheSchemaSaysString() throws {
        let built = try CommandArguments.build(command: "nbd-server-add", words: ["device=123", "writable=true", "name=disk"])
        XCTAssertEqual(built, .object(["device": .string("123"), "writable": .bool(true), "name": .string("disk")]))
        let flat = try CommandArguments.build(command: "blockdev-add", words: ["driver=null-co", "node-name=n0", "size=1048576", "cache.direct=false"])
        XCTAssertEqual(flat, .object([
            "driver": .string("null-co"), "node-name": .string("n0"), "size": .integer(1_048_576),
            "cache": .object(["direct": .bool(false)]),
        ]))
        XCTAssertNil(try CommandArguments.build(command: "query-block", words: []))
    }

    func testSchemaChecksBeforeSending() {
        XCTAssertThrowsError(try CommandArguments.build(command: "query-version", words: ["x=1"])) {
            XCTAssertEqual("\($0)", "query-version has no argument 'x' (it takes none)")
        }
        XCTAssertThrowsError(try CommandArguments.build(command: "query-block", words: ["x=1"])) {
            XCTAssertEqual("\($0)", "query-block has no argument 'x' (it takes: x-blockd-exports)")
        }
        XCTAssertThrowsError(try CommandArguments.build(command: "nbd-server-remove", words: [])) {
            XCTAssertTrue("\($0)".hasPrefix("nbd-server-remove needs argument 'name' (str)"))
        }
        XCTAssertThrowsError(try CommandArguments.build(command: "no-such-command", words: []))
        XCTAssertThrowsError(try CommandArguments.build(command: "nbd-server-add", words: ["device"]))
        XCTAssertThrowsError(try CommandArguments.build(command: "nbd-server-add", words: ["device=a", "device=b"]))
    }
}
