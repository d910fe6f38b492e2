import BlockCore
import BlockDrivers
import XCTest

/// Parsing and validation of parallels headers.
final class ParallelsTests: XCTestCase {
    private func header() -> ParallelsHeader {
        var header = ParallelsHeader()
        header.tracks = 128
        header.batEntries = 128
        header.sectors = 16384
        header.cylinders = 32
        header.dataOffset = 128
        return header
    }

    func testRoundTrip() throws {
        let original = header()
        let parsed = try ParallelsHeader.parse(original.serialized(), fileLength: 65536)
        XCTAssertEqual(parsed, original)
        XCTAssertEqual(parsed.clusterSize, 65536)
        XCTAssertEqual(parsed.entryUnit, 128)
        var old = original
        old.extended = false
        XCTAssertEqual(try ParallelsHeader.parse(old.serialized(), fileLength: 65536).entryUnit, 1)
    }

    func testRefusals() {
        var zero = header()
        zero.tracks = 0
        var big = header()
        big.tracks = 1 << 30
        var catalog = header()
        catalog.batEntries = .max
        var small = header()
        small.batEntries = 2
        for candidate in [zero, big, catalog, small] {
            XCTAssertThrowsError(try ParallelsHeader.parse(candidate.serialized(), fileLength: 65536))
        }
        var version = header().serialized()
        version[16] = 3
        XCTAssertThrowsError(try ParallelsHeader.parse(version, fileLength: 65536))
    }

    func testProbe() {
        XCTAssertEqual(ImageFormats.probe(header: header().serialized(), filename: "x"), "parallels")
    }
}
