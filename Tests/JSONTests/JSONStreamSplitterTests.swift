import JSON
import XCTest

/// The stream splitter as transcripts: bytes in, pieces out, the same for every way of cutting the
/// input in two; memory bounded whatever comes; recovery as QEMU's lexer recovers.
final class JSONStreamSplitterTests: XCTestCase {
    private func pieces(_ bytes: [UInt8], maxLength: Int = 16 << 20, maxDepth: Int = 1024) -> [JSONStreamSplitter.Piece] {
        var splitter = JSONStreamSplitter(maxLength: maxLength, maxDepth: maxDepth)
        return splitter.feed(bytes)
    }

    /// Checks that `input` gives `expected` fed whole, byte by byte, and cut in two at every place.
    private func verify(_ input: [UInt8], _ expected: [JSONStreamSplitter.Piece], maxLength: Int = 16 << 20, maxDepth: Int = 1024,
                        file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(pieces(input, maxLength: maxLength, maxDepth: maxDepth), expected, "whole", file: file, line: line)
        var bytewise = JSONStreamSplitter(maxLength: maxLength, maxDepth: maxDepth)
        XCTAssertEqual(input.flatMap { bytewise.feed([$0]) }, expected, "byte by byte", file: file, line: line)
        for split in 0...input.count {
            var splitter = JSONStreamSplitter(maxLength: maxLength, maxDepth: maxDepth)
            let got = splitter.feed(input[0..<split]) + splitter.feed(input[split...])
            XCTAssertEqual(got, expected, "split at \(split)", file: file, line: line)
        }
    }

    private func value(_ text: String) -> JSONStreamSplitter.Piece { .value(Array(text.utf8)) }

    func testValuesAreCutOutWithStringsAndEscapesRespected() {
        verify(Array(#" {"a": "}{\"]"} [1, [2]]{"b":{}}"#.utf8),
               [value(#"{"a": "}{\"]"}"#), value("[1, [2]]"), value(#"{"b":{}}"#)])
    }

    func testATokenOutsideAnyValueIsAValueOfItsOwnForTheParserToAnswer() {
        // As QEMU's streamer: the parser then says "invalid keyword", "expecting value" or
        // "QMP input must be a JSON object".
        verify(Array("garbage\n{\"x\": 1}".utf8), [value("garbage"), value(#"{"x": 1}"#)])
        // No white space needed: a brace ends a keyword or number, as in QEMU's lexer.
        verify(Array("123 abc{}".utf8), [value("123"), value("abc"), value("{}")])
        verify(Array("}\n[],:".utf8), [value("}"), value("[]"), value(","), value(":")])
        verify(Array(#""a}b" 'c' -1.5e+3 "#.utf8), [value(#""a}b""#), value("'c'"), value("-1.5e+3")])
    }

    func testSingleQuotedStringsHoldDoubleQuotesAndEscapedSingleQuotes() {
        verify(Array(#"{'a': '}"{\'['} {}"#.utf8), [value(#"{'a': '}"{\'['}"#), value("{}")])
    }

    func testABrokenNumberOrAForbiddenByteIsReportedWithTheTokenItBroke() {
        verify(Array(#"{"a": 01}"#.utf8), [.error(.stray(Array("01".utf8))), value("}")])
        verify(Array(#"{"a": -} {}"#.utf8), [.error(.stray(Array("-}".utf8))), value("{}")])
        verify(Array(#"{"a": 1e+}"#.utf8), [.error(.stray(Array("1e+}".utf8)))])
        verify(Array(#"{"a": True}"#.utf8), [.error(.stray(Array("T".utf8))), value("}")])
        verify(Array("%d\n[]".utf8), [.error(.stray(Array("%".utf8))), value("[]")])
    }

    func testTheResetByteDropsAPartialValueAndIsAnsweredOnce() {
        verify(Array(#"{"execute": {"nested": {"x"#.utf8) + [0xFF] + Array("{}".utf8), [.error(.stray(Array(#""x"#.utf8) + [0xFF])), value("{}")])
        // Several reset bytes, or a reset byte and a newline, are one error.
        verify([0xFF, 0xFE, 0x0A] + Array("[]".utf8), [.error(.stray([0xFF])), value("[]")])
        verify([0xFF, 0xFF, 0xFF], [.error(.stray([0xFF]))])
        // With nothing pending a reset byte is answered too (QEMU does so; clients ignore it).
        verify([0xFF] + Array("{}".utf8) + [0xFF], [.error(.stray([0xFF])), value("{}"), .error(.stray([0xFF]))])
    }

    func testControlCharactersAreLexicalErrorsLikeTheResetByte() {
        // Outside strings white space is fine; other control characters reset (the way QEMU's
        // qmp-spec tells clients to reset).
        verify(Array("{\t\r\n}".utf8), [value("{\t\r\n}")])
        verify(Array("{\"a\"".utf8) + [0x01] + Array("{}".utf8), [.error(.stray([0x01])), value("{}")])
        // Inside a string even a newline is one (no JSON string holds a raw control character);
        // the skipping ends at the closing brace, which is then a value of its own.
        verify(Array("{\"a\nb\"}".utf8), [.error(.stray(Array("\"a\n".utf8))), value("}")])
    }

    func testAnOverlongValueIsReportedOnceSkippedToItsEndAndNotKept() {
        let long = Array(#"{"s": "0123456789", "t": [1, 2, 3]}"#.utf8)
        verify(long + Array("{}".utf8), [.error(.tooLong), value("{}")], maxLength: 16)
        verify(long, [value(String(decoding: long, as: UTF8.self))], maxLength: long.count)
        // Closing characters inside the skipped strings do not end it early.
        verify(Array(#"{"s": "}}}}}}}}}}}}}}}}}}}}"} {}"#.utf8), [.error(.tooLong), value("{}")], maxLength: 8)
    }

    func testAResetByteEndsASkippedValueSilently() {
        verify(Array(#"{"s": "an endless string"#.utf8) + [0xFF] + Array("{}".utf8),
               [.error(.tooLong), value("{}")], maxLength: 8)
    }

    func testMemoryStaysBoundedWhateverComes() {
        var splitter = JSONStreamSplitter(maxLength: 1024)
        let garbage = [UInt8](repeating: UInt8(ascii: "x"), count: 1 << 20)
        XCTAssertEqual(splitter.feed(garbage), [.error(.tooLong)])
        XCTAssertEqual(splitter.bufferedCount, 0)
        let string = [UInt8](repeating: UInt8(ascii: "y"), count: 1 << 20)
        XCTAssertEqual(splitter.feed(Array(#"{"a": ""#.utf8)), [])
        for _ in 0..<8 {
            XCTAssertTrue(splitter.feed(string).allSatisfy { $0 == .error(.tooLong) })
            XCTAssertLessThanOrEqual(splitter.bufferedCount, 1024)
        }
        let open = [UInt8](repeating: UInt8(ascii: "["), count: 1 << 20)
        XCTAssertEqual(splitter.feed([0xFF] + open), [.error(.tooLong)])
        XCTAssertLessThanOrEqual(splitter.bufferedCount, 1024)
    }

    func testNestingDeeperThanTheLimitIsReportedOnceAndSkipped() {
        let deep = [UInt8](repeating: UInt8(ascii: "["), count: 40) + [UInt8](repeating: UInt8(ascii: "]"), count: 40)
        verify(deep + Array("{}".utf8), [.error(.tooDeep), value("{}")], maxDepth: 32)
        verify(deep, [value(String(decoding: deep, as: UTF8.self))], maxDepth: 40)
    }

    func testErrorMessagesAreQEMUs() {
        XCTAssertEqual(JSONStreamError.tooLong.message, "JSON token size limit exceeded")
        XCTAssertEqual(JSONStreamError.tooDeep.message, "JSON nesting depth limit exceeded")
        XCTAssertEqual(JSONStreamError.stray([0xFF]).message, "JSON parse error, stray '\u{FFFD}'")
        XCTAssertEqual(JSONStreamError.stray([0x30, 0x31]).message, "JSON parse error, stray '01'")
    }
}
