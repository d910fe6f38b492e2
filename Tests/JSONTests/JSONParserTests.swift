import JSON
import XCTest

/// The parser against hostile input: every case is an error or a value, never a crash.
final class JSONParserTests: XCTestCase {
    private func parseError(_ bytes: [UInt8]) -> String? {
        do {
            _ = try JSONValue.parse(bytes: bytes)
            return nil
        } catch {
            return error.message
        }
    }

    func testTheNulEscapeIsRefused() {
        XCTAssertEqual(parseError(Array(#"{"filename": "a.img\u0000.evil"}"#.utf8)),
                       #"invalid JSON at byte 25: \u0000 is not a valid Unicode character"#)
        XCTAssertEqual(parseError(Array(#""\u0000""#.utf8)), #"invalid JSON at byte 7: \u0000 is not a valid Unicode character"#)
        // Other escapes of control characters are fine.
        XCTAssertEqual(try JSONValue.parse(#""a\u0001b""#), .string("a\u{01}b"))
        // A raw NUL byte is a control character in a string; the overlong encoding is not UTF-8.
        XCTAssertNotNil(parseError([0x22, 0x00, 0x22]))
        XCTAssertNotNil(parseError([0x22, 0xC0, 0x80, 0x22]))
    }

    func testNestingIsBounded() {
        func nested(_ depth: Int) -> [UInt8] {
            [UInt8](repeating: UInt8(ascii: "["), count: depth) + [UInt8](repeating: UInt8(ascii: "]"), count: depth)
        }
        XCTAssertNoThrow(try JSONValue.parse(bytes: nested(64)))
        XCTAssertEqual(parseError(nested(65)), "invalid JSON at byte 64: nesting deeper than 64")
        XCTAssertNotNil(parseError(nested(1_000_000)))
        let objects = Array((String(repeating: #"{"a": "#, count: 100_000) + "1" + String(repeating: "}", count: 100_000)).utf8)
        XCTAssertNotNil(parseError(objects))
    }

    func testHugeNumbersBecomeDoublesOrErrors() throws {
        XCTAssertEqual(try JSONValue.parse("9223372036854775807"), .integer(Int64.max))
        XCTAssertEqual(try JSONValue.parse("18446744073709551615"), .double(Double(UInt64.max)))
        XCTAssertEqual(try JSONValue.parse(String(repeating: "9", count: 100_000)), .double(.infinity))
        XCTAssertEqual(try JSONValue.parse("1e99999"), .double(.infinity))
        XCTAssertEqual(try JSONValue.parse("-1e99999"), .double(-.infinity))
        XCTAssertEqual(try JSONValue.parse("1e-99999"), .double(0))
        for bad in ["-", "1.2.3", "1e", "--1", "0x10", "1-2"] {
            XCTAssertNotNil(parseError(Array(bad.utf8)), bad)
        }
    }

    func testInvalidUTF8AndSurrogatesAreErrors() {
        for bytes: [UInt8] in [
            [0x22, 0xFF, 0x22], [0x22, 0x80, 0x22], [0x22, 0xC3, 0x22], [0x22, 0xED, 0xA0, 0x80, 0x22],
            [0x22, 0xF4, 0x90, 0x80, 0x80, 0x22], [0x22, 0xE2, 0x82, 0x22],
        ] {
            XCTAssertNotNil(parseError(bytes), "\(bytes)")
        }
        for text in [#""\ud800""#, #""\udc00""#, #""\ud800\u0041""#, #""\u12""#, #""\uzzzz""#, #""\x""#, #""abc"#] {
            XCTAssertNotNil(parseError(Array(text.utf8)), text)
        }
        XCTAssertEqual(try JSONValue.parse(#""\ud83d\ude00""#), .string("\u{1F600}"))
    }

    func testEveryTruncationOfAValueIsAnError() {
        let text = Array(#"{"a": [1, -2.5e3, true, null, "x\"y\u00e9"], "b": {"c": false}}"#.utf8)
        XCTAssertNoThrow(try JSONValue.parse(bytes: text))
        for end in 0..<text.count {
            XCTAssertNotNil(parseError(Array(text[0..<end])), "truncated at \(end)")
        }
    }

    func testTrailingBytesAndNonStandardSyntaxAreErrors() {
        for text in ["1 2", "{} x", "[1,]", #"{"a": 1,}"#, "NaN", "Infinity", #"{a: 1}"#, "", "   ", "[", #"{"a" 1}"#, "tru", "nul"] {
            XCTAssertNotNil(parseError(Array(text.utf8)), "'\(text)' is not JSON")
        }
        XCTAssertEqual(try JSONValue.parse(" [ ] "), .array([]), "whitespace around a value is fine")
        // QEMU's one extension: strings in single quotes, with \' as an escape.
        XCTAssertEqual(try JSONValue.parse(#"{'a': 'it\'s "q"'}"#), .object(["a": .string(#"it's "q""#)]))
    }
}
