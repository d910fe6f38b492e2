import BlockCore
import BlockDrivers
import XCTest

/// Parsing and validation of qed headers.
final class QedTests: XCTestCase {
    private func header(clusterSize: UInt32 = 65536, tableSize: UInt32 = 4, size: UInt64 = 8 << 20) -> QedHeader {
        var header = QedHeader()
        header.clusterSize = clusterSize
        header.tableSize = tableSize
        header.imageSize = size
        header.l1TableOffset = UInt64(clusterSize)
        return header
    }

    func testRoundTripWithBackingName() throws {
        var original = header()
        original.features = QedHeader.backingFileFeature | QedHeader.noProbeFeature
        original.backingFile = "base.raw"
        original.backingNameOffset = 64
        original.backingNameSize = 8
        let parsed = try QedHeader.parse(original.serializedWithName(), fileLength: 327680)
        XCTAssertEqual(parsed, original)
        XCTAssertEqual(parsed.backingFormat, "raw")
        XCTAssertEqual(parsed.maxImageSize, 32768 * 32768 * 65536)
    }

    func testRefusals() {
        let cases: [(QedHeader, String)] = [
            (header(clusterSize: 1024), "cluster size"),
            (header(clusterSize: 65537), "cluster size"),
            (header(tableSize: 3), "table size"),
            (header(tableSize: 32), "table size"),
            (header(size: 1000), "image size"),
            (header(clusterSize: 4096, tableSize: 1, size: 2 << 30), "image size"),
        ]
        for (candidate, words) in cases {
            XCTAssertThrowsError(try QedHeader.parse(candidate.serialized(), fileLength: 1 << 30)) { error in
                XCTAssertTrue("\(error)".contains(words), "\(error)")
            }
        }
        var unknown = header()
        unknown.features = 1 << 9
        XCTAssertThrowsError(try QedHeader.parse(unknown.serialized(), fileLength: 1 << 30))
        XCTAssertThrowsError(try QedHeader.parse(header().serialized(), fileLength: 65536 + 100), "L1 past the end")
        XCTAssertThrowsError(try QedHeader.parse(Array(header().serialized()[0..<40]), fileLength: 1 << 30))
    }

    func testProbe() {
        XCTAssertEqual(ImageFormats.probe(header: header().serialized(), filename: "x"), "qed")
        XCTAssertEqual(ImageFormats.probe(header: [0x51, 0x45, 0x44, 0x01], filename: "x"), "raw")
    }
}
