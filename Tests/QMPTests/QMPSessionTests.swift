import JSON
import QAPI
import QMP
import XCTest

/// The monitor protocol as transcripts (docs/interop/qmp-spec.txt): requests in, exact replies out.
final class QMPSessionTests: XCTestCase {
    private func session() -> QMPSession {
        let table = QMPCommandTable()
        table.register(QueryVersionCommand.self) { _ throws(QAPIError) in
            VersionInfo(qemu: VersionTriple(major: 2, minor: 6, micro: 0), package: "test")
        }
        table.register(BlockdevDelCommand.self) { arguments throws(QAPIError) in
            throw .deviceNotFound(arguments.nodeName)
        }
        return QMPSession(commands: table)
    }

    private func send(_ session: inout QMPSession, _ text: String) -> JSONValue? {
        var splitter = JSONStreamSplitter()
        return splitter.feed(Array(text.utf8)).compactMap { session.handle($0) }.first
    }

    func testGreeting() {
        XCTAssertEqual(QMPSession.greeting(version: (2, 6, 0), package: "blockd").serialized(),
                       #"{"QMP": {"capabilities": [],"version": {"package": "blockd","qemu": {"major": 2,"micro": 0,"minor": 6}}}}"#)
    }

    func testCommandsNeedNegotiationFirst() {
        var qmp = session()
        XCTAssertEqual(send(&qmp, #"{"execute": "query-version", "id": 7}"#)?.serialized(),
                       #"{"error": {"class": "CommandNotFound","desc": "Expecting capabilities negotiation with 'qmp_capabilities'"},"id": 7}"#)
        XCTAssertEqual(send(&qmp, #"{"execute": "qmp_capabilities", "id": "a"}"#), .object(["return": .object([:]), "id": .string("a")]))
        XCTAssertEqual(send(&qmp, #"{"execute": "qmp_capabilities"}"#)?["error"]?["class"], .string("CommandNotFound"))
        XCTAssertEqual(send(&qmp, #"{"execute": "query-version", "id": [1, {"x": null}]}"#)?["id"], .array([.integer(1), .object(["x": .null])]))
    }

    func testErrorsKeepTheSessionGoing() {
        var qmp = session()
        _ = send(&qmp, #"{"execute": "qmp_capabilities"}"#)
        XCTAssertEqual(send(&qmp, #"{"execute": "nope"}"#)?["error"]?["desc"], .string("The command nope has not been found"))
        XCTAssertEqual(send(&qmp, #"{"execute": "blockdev-del", "arguments": {}}"#)?["error"]?["desc"],
                       .string("Parameter 'node-name' is missing"))
        XCTAssertEqual(send(&qmp, #"{"execute": "blockdev-del", "arguments": {"node-name": "x"}}"#)?["error"]?["class"],
                       .string("DeviceNotFound"))
        XCTAssertEqual(send(&qmp, #"{"execute": "query-version", "arguments": {"x": 1}}"#)?["error"]?["desc"],
                       .string("Parameter 'x' is unexpected"))
        XCTAssertEqual(send(&qmp, #"{"execute": "query-version", "bogus": 1}"#)?["error"]?["desc"],
                       .string("QMP input member 'bogus' is unexpected"))
        XCTAssertEqual(send(&qmp, #"{"arguments": {}}"#)?["error"]?["desc"], .string("QMP input lacks member 'execute'"))
        XCTAssertEqual(send(&qmp, #"{"execute": "query-version", "arguments": [1]}"#)?["error"]?["desc"],
                       .string("QMP input member 'arguments' must be an object"))
        XCTAssertEqual(send(&qmp, "[1, 2]")?["error"]?["desc"], .string("QMP input must be a JSON object"))
        XCTAssertEqual(send(&qmp, "garbage\n")?["error"]?["class"], .string("GenericError"))
        XCTAssertEqual(send(&qmp, #"{"execute": "query-version"}"#)?["return"]?["package"], .string("test"))
    }

    func testDroppedInputIsAnsweredWithQEMUsErrorsAndTheSessionGoesOn() {
        var qmp = session()
        _ = send(&qmp, #"{"execute": "qmp_capabilities"}"#)
        var splitter = JSONStreamSplitter(maxLength: 80)
        let input = Array(#"{"execute": "query-version", "arguments": {"#.utf8) + [0xFF]
            + Array(#"{"execute": "query-version", "id": "\#(String(repeating: "x", count: 100))"}"#.utf8)
            + Array(#"{"execute": "blockdev-del", "arguments": {"node-name": "a\u0000b"}}"#.utf8)
            + Array(#"{"execute": "query-version", "id": 1}"#.utf8)
        let replies = splitter.feed(input).compactMap { qmp.handle($0)?.serialized() }
        XCTAssertEqual(replies, [
            #"{"error": {"class": "GenericError","desc": "JSON parse error, stray '\#u{FFFD}'"}}"#,
            #"{"error": {"class": "GenericError","desc": "JSON token size limit exceeded"}}"#,
            #"{"error": {"class": "GenericError","desc": "JSON parse error, invalid JSON at byte 63: \\u0000 is not a valid Unicode character"}}"#,
            #"{"id": 1,"return": {"package": "test","qemu": {"major": 2,"micro": 0,"minor": 6}}}"#,
        ])
    }

    func testSplitterHandlesEveryByteSplitAndStrings() {
        let text = #"{"execute": "x", "arguments": {"s": "}{\"]"}} {"execute":"y"}"#
        let bytes = Array(text.utf8)
        for split in 0...bytes.count {
            var splitter = JSONStreamSplitter()
            let pieces = splitter.feed(bytes[0..<split]) + splitter.feed(bytes[split...])
            XCTAssertEqual(pieces.count, 2, "split at \(split)")
            if case .value(let first) = pieces.first {
                XCTAssertEqual(try JSONValue.parse(bytes: first)["arguments"]?["s"], .string("}{\"]"))
            }
        }
    }
}
