@testable import Daemon
import XCTest

/// The `json:{...}` pseudo-filenames QEMU prints: members in its QDict's hash order, its spacing and
/// escapes. The expected texts are qemu-storage-daemon 7.2's answers for the same options.
final class QDictTests: XCTestCase {
    private func dict(_ members: [(String, QObject)]) -> QDict {
        var dict = QDict()
        for (key, value) in members { dict.put(key, value) }
        return dict
    }

    func testMembersComeInQemusHashOrder() {
        let null = dict([("driver", .string("null-co")), ("size", .integer(1_048_576)), ("read-zeroes", .bool(true))])
        XCTAssertEqual(null.json, #"{"read-zeroes": true, "driver": "null-co", "size": 1048576}"#)
        let raw = dict([("driver", .string("raw")), ("offset", .integer(1_048_576)), ("size", .integer(4_194_304)),
                        ("file", .dict(dict([("driver", .string("file")), ("filename", .string("/w/win.img"))])))])
        XCTAssertEqual(raw.json, #"{"offset": 1048576, "driver": "raw", "size": 4194304, "file": {"driver": "file", "filename": "/w/win.img"}}"#)
        let throttle = dict([("driver", .string("throttle")), ("throttle-group", .string("tg0")),
                             ("file", .dict(dict([("driver", .string("null-co"))])))])
        XCTAssertEqual(throttle.json, #"{"throttle-group": "tg0", "driver": "throttle", "file": {"driver": "null-co"}}"#)
        let quorum = dict([("driver", .string("quorum")), ("vote-threshold", .integer(2)),
                           ("children", .list([.dict(dict([("driver", .string("null-co"))]))]))])
        XCTAssertEqual(quorum.json, #"{"children": [{"driver": "null-co"}], "driver": "quorum", "vote-threshold": 2}"#)
        let overridden = dict([("driver", .string("qcow2")), ("file", .dict(QDict())), ("backing", .null)])
        XCTAssertEqual(overridden.keys, ["backing", "driver", "file"])
    }

    func testReplacingAMemberKeepsOneEntry() {
        var value = dict([("driver", .string("a"))])
        value.put("driver", .string("b"))
        XCTAssertEqual(value.json, #"{"driver": "b"}"#)
    }

    func testStringsAreEscapedAsQemuDoes() {
        XCTAssertEqual(QObject.string("a\"b\\c/d").json, #""a\"b\\c/d""#)
        XCTAssertEqual(QObject.string("tab\tnew\n").json, #""tab\tnew\n""#)
        XCTAssertEqual(QObject.string("é").json, #""\u00E9""#)
        XCTAssertEqual(QObject.string("😀").json, #""\uD83D\uDE00""#)
        XCTAssertEqual(QObject.list([.integer(-1), .null, .bool(false)]).json, "[-1, null, false]")
        XCTAssertEqual(QDict().json, "{}")
    }
}
