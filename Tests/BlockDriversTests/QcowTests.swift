import BlockCore
import BlockDrivers
import XCTest

/// Parsing and validation of qcow (version 1) headers.
final class QcowTests: XCTestCase {
    private func header(size: UInt64 = 8 << 20) -> QcowHeader {
        var header = QcowHeader()
        header.size = size
        header.l1TableOffset = 48
        return header
    }

    func testRoundTripWithBackingName() throws {
        var original = header()
        original.backingFile = "base.raw"
        original.backingFileOffset = 48
        original.backingFileSize = 8
        original.clusterBits = 9
        original.l2Bits = 12
        original.l1TableOffset = 56
        let parsed = try QcowHeader.parse(original.serialized(), fileLength: 568)
        XCTAssertEqual(parsed, original)
        XCTAssertEqual(parsed.l1Entries, 4)
    }

    func testRefusals() {
        var bits = header()
        bits.clusterBits = 20
        var l2 = header()
        l2.l2Bits = 20
        var encrypted = header()
        encrypted.cryptMethod = 1
        for candidate in [bits, l2, encrypted, header(size: 1 << 60)] {
            XCTAssertThrowsError(try QcowHeader.parse(candidate.serialized(), fileLength: 1 << 30))
        }
        var version = header().serialized()
        version[7] = 2
        XCTAssertThrowsError(try QcowHeader.parse(version, fileLength: 1 << 30))
        XCTAssertThrowsError(try QcowHeader.parse(header(size: 1 << 40).serialized(), fileLength: 560), "L1 past the end")
    }

    func testProbe() {
        XCTAssertEqual(ImageFormats.probe(header: header().serialized(), filename: "x"), "qcow")
    }
}
