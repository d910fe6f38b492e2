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
                       #"{"QMP": {"capabilities": ["oob"], "version": {"package": "blockd", "qemu": {"major": 2, "micro": 0, "minor": 6}}}}"#)
    }

    func testCommandsNeedNegotiationFirst() {
        var qmp = session()
        XCTAssertEqual(send(&qmp, #"{"execute": "query-version", "id": 7}"#)?.serialized(),
                       #"{"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}, "id": 7}"#)
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
        XCTAssertEqual(send(&qmp, "garbage\n")?["error"]?["desc"], .string("JSON parse error, invalid keyword 'garbage'"))
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
            #"{"error": {"class": "GenericError", "desc": "JSON parse error, stray '\uFFFD'"}}"#,
            #"{"error": {"class": "GenericError", "desc": "JSON token size limit exceeded"}}"#,
            #"{"error": {"class": "GenericError", "desc": "JSON parse error, \\u0000 is not a valid Unicode character"}}"#,
            #"{"id": 1, "return": {"package": "test", "qemu": {"major": 2, "micro": 0, "minor": 6}}}"#,
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

    /// Every reply to `lines`, one string each, after negotiating with `capabilities`.
    private func transcript(_ lines: [String], enable capabilities: String? = nil) -> [String] {
        var qmp = session()
        var splitter = JSONStreamSplitter()
        let negotiate = capabilities.map { #"{"execute": "qmp_capabilities", "arguments": {"enable": [\#($0)]}}"# }
            ?? #"{"execute": "qmp_capabilities"}"#
        _ = send(&qmp, negotiate)
        return lines.flatMap { line in splitter.feed(Array((line + "\n").utf8)).compactMap { qmp.handle($0)?.serialized() } }
    }

    private func error(_ description: String, _ errorClass: String = "GenericError", id: String? = nil) -> String {
        #"{"error": {"class": "\#(errorClass)", "desc": "\#(description)"}\#(id.map { ", \"id\": \($0)" } ?? "")}"#
    }

    func testParseErrorsAreWordedAsQEMUWordsThem() {
        // Each answer is what qemu-storage-daemon 7.2 gives for the same line.
        let cases: [(String, [String])] = [
            (#"{"execute": }"#, [error("JSON parse error, expecting value")]),
            (#"{"a" 1}"#, [error("JSON parse error, missing : in object pair")]),
            (#"{1: 2}"#, [error("JSON parse error, key is not a string in object")]),
            (#"{"a": 1 "b": 2}"#, [error("JSON parse error, expected separator in dict")]),
            ("[1 2]", [error("JSON parse error, expected separator in list")]),
            (#"{"a": [1,]}"#, [error("JSON parse error, expecting value")]),
            (#"{"a": tru}"#, [error("JSON parse error, invalid keyword 'tru'")]),
            (#"{"a": "\x"}"#, [error("JSON parse error, invalid escape sequence in string")]),
            (#"{"a": "\u12"}"#, [error(#"JSON parse error, \\u12\" is not a valid Unicode character"#)]),
            (#"{"a": "\ud83d"}"#, [error(#"JSON parse error, \\ud83d is not a valid Unicode character"#)]),
            (#"{"a": "\ude00"}"#, [error(#"JSON parse error, \\ude00 is not a valid Unicode character"#)]),
            (#"{"a": 1, "a": 2}"#, [error("JSON parse error, duplicate key")]),
            (#"{"a": 01}"#, [error("JSON parse error, stray '01'"), error("JSON parse error, expecting value")]),
            (#"{"a": -}"#, [error("JSON parse error, stray '-}'")]),
            (#"{"a": 1.}"#, [error("JSON parse error, stray '1.}'")]),
            (#"{"a": 1e}"#, [error("JSON parse error, stray '1e}'")]),
            (#"{"a": True}"#, [error("JSON parse error, stray 'T'"), error("JSON parse error, expecting value")]),
            ("%d", [error("JSON parse error, stray '%'")]),
            ("abc", [error("JSON parse error, invalid keyword 'abc'")]),
            ("123", [error("QMP input must be a JSON object")]),
            (#""abc""#, [error("QMP input must be a JSON object")]),
            ("true", [error("QMP input must be a JSON object")]),
            (",", [error("JSON parse error, expecting value")]),
            ("]", [error("JSON parse error, expecting value")]),
            (#"{"execute": "query-version", "id": 1}}"#,
             [#"{"id": 1, "return": {"package": "test", "qemu": {"major": 2, "micro": 0, "minor": 6}}}"#, error("JSON parse error, expecting value")]),
        ]
        for (line, expected) in cases {
            XCTAssertEqual(transcript([line]), expected, line)
        }
    }

    func testSingleQuotedStringsAreTakenAsQEMUTakesThem() {
        XCTAssertEqual(transcript([#"{'execute': 'query-version', 'id': 'it\'s'}"#]),
                       [#"{"id": "it's", "return": {"package": "test", "qemu": {"major": 2, "micro": 0, "minor": 6}}}"#])
        XCTAssertEqual(transcript([#"{'execute': 'query-version', 'id': 'a"b'}"#]).first?.hasPrefix(#"{"id": "a\"b""#), true)
        XCTAssertEqual(transcript([#"{'execute': 'query-version', 'id': 'it''s'}"#]), [error("JSON parse error, expected separator in dict")])
    }

    func testRepliesEscapeCharactersOutsideASCIIAsQEMUDoes() {
        XCTAssertEqual(transcript([#"{"execute": "query-version", "id": "x\u00e9\ud83d\ude00\u007f\b"}"#]),
                       [#"{"id": "x\u00E9\uD83D\uDE00\u007F\b", "return": {"package": "test", "qemu": {"major": 2, "micro": 0, "minor": 6}}}"#])
        XCTAssertEqual(JSONValue.string("é/\t").serialized(), #""\u00E9/\t""#)
    }

    func testOutOfBandIsOfferedAndNoCommandRunsOutOfBand() {
        // Without the capability exec-oob is an unknown member, with or without execute.
        XCTAssertEqual(transcript([#"{"exec-oob": "query-version"}"#]), [error("QMP input member 'exec-oob' is unexpected")])
        XCTAssertEqual(transcript([#"{"execute": "query-version", "exec-oob": "query-version"}"#]),
                       [error("QMP input member 'exec-oob' is unexpected")])
        // With it, commands still run in band; out of band none of a storage daemon's does.
        XCTAssertEqual(transcript([#"{"execute": "query-version", "id": 5}"#], enable: #""oob""#).first?.hasPrefix(#"{"id": 5, "return""#), true)
        XCTAssertEqual(transcript([#"{"exec-oob": "query-version", "id": 1}"#], enable: #""oob", "oob""#),
                       [error("The command query-version does not support OOB", id: "1")])
        XCTAssertEqual(transcript([#"{"exec-oob": "nosuch", "id": 3}"#], enable: #""oob""#),
                       [error("The command nosuch has not been found", "CommandNotFound", id: "3")])
        XCTAssertEqual(transcript([#"{"exec-oob": "query-version", "execute": "query-version"}"#], enable: #""oob""#),
                       [error("QMP input member 'execute' clashes with 'exec-oob'")])
        XCTAssertEqual(transcript([#"{"exec-oob": 1}"#], enable: #""oob""#), [error("QMP input member 'exec-oob' must be a string")])
    }
}
