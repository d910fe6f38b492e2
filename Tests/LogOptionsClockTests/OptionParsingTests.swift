import XCTest
import LogOptionsClock

final class OptionParsingTests: XCTestCase {
    func testDottedKeysBecomeObjects() throws {
        let value = try KeyValueParser.parse("driver=file,cache.direct=on,filename=a,,b")
        XCTAssertEqual(value, .object([
            "driver": .string("file"),
            "cache": .object(["direct": .string("on")]),
            "filename": .string("a,b"),
        ]))
    }

    func testImpliedKeyAndNumericArrays() throws {
        let value = try KeyValueParser.parse("nbd,id=e0,bitmaps.0=b0,bitmaps.1=b1", impliedKey: "type")
        XCTAssertEqual(value, .object(["type": .string("nbd"), "id": .string("e0"), "bitmaps": .array([.string("b0"), .string("b1")])]))
    }

    func testNonCanonicalNumericKeysAreNotIndices() throws {
        // Found by the keyvalue fuzzer: `00=x` once trapped on a force-unwrap (Int("00") == 0).
        XCTAssertEqual(try KeyValueParser.parse("00=x"), .object(["00": .string("x")]))
        XCTAssertEqual(try KeyValueParser.parse("a.+0=x,a.-0=y"), .object(["a": .object(["+0": .string("x"), "-0": .string("y")])]))
        XCTAssertEqual(try KeyValueParser.parse("a.0=x,a.1=y"), .object(["a": .array([.string("x"), .string("y")])]))
    }

    func testSyntaxErrorsNameTheProblem() {
        XCTAssertThrowsError(try KeyValueParser.parse("driver=file,driver=raw")) {
            XCTAssertEqual(($0 as? OptionError)?.message, "parameter 'driver' is given twice")
        }
        XCTAssertThrowsError(try KeyValueParser.parse("a=1,a.b=2"))
        XCTAssertThrowsError(try KeyValueParser.parse("novalue"))
        XCTAssertThrowsError(try KeyValueParser.parse("a=1,,,b")) { XCTAssertNotNil($0 as? OptionError) }
        XCTAssertThrowsError(try KeyValueParser.parse("x.0=a,x.2=b"))
    }

    func testJSONForm() throws {
        let value = try KeyValueParser.parse(#"{"driver":"null-co","size":1048576,"read-zeroes":true,"x":[1.5,null,"\u00e9"]}"#)
        XCTAssertEqual(value, .object([
            "driver": .string("null-co"), "size": .integer(1_048_576), "read-zeroes": .bool(true),
            "x": .array([.double(1.5), .null, .string("é")]),
        ]))
        XCTAssertThrowsError(try KeyValueParser.parse(#"{"a":1,"a":2}"#))
        XCTAssertThrowsError(try KeyValueParser.parse(#"{"a":1"#))
        XCTAssertThrowsError(try KeyValueParser.parse(#"{"a":1} x"#))
    }

    func testReaderTypesAndUnknownKeys() throws {
        let reader = try OptionReader(try KeyValueParser.parse("size=64M,on=yes,count=12,mode=b,extra=1"), context: "--blockdev")
        XCTAssertEqual(try reader.size("size"), 64 << 20)
        XCTAssertEqual(try reader.bool("on"), true)
        XCTAssertEqual(try reader.unsigned("count"), 12)
        XCTAssertEqual(try reader.choice("mode", ["a", "b"]), "b")
        XCTAssertThrowsError(try reader.finish()) {
            XCTAssertEqual(($0 as? OptionError)?.message, "--blockdev: unknown parameter 'extra'")
        }
        let bad = try OptionReader(try KeyValueParser.parse("size=12Q,flag=maybe"), context: "ctx")
        XCTAssertThrowsError(try bad.size("size")) {
            XCTAssertEqual(($0 as? OptionError)?.message, "ctx: parameter 'size' expects a size (such as 4096, 64M or 1G), got '12Q'")
        }
        XCTAssertThrowsError(try bad.bool("flag"))
    }

    func testSizeSuffixes() {
        XCTAssertEqual(OptionReader.parseSize("4096"), 4096)
        XCTAssertEqual(OptionReader.parseSize("1k"), 1024)
        XCTAssertEqual(OptionReader.parseSize("1.5G"), 3 << 29)
        XCTAssertEqual(OptionReader.parseSize("2T"), 2 << 40)
        XCTAssertNil(OptionReader.parseSize("99999999999E"))
        XCTAssertNil(OptionReader.parseSize("-1"))
        XCTAssertNil(OptionReader.parseSize(""))
    }
}
