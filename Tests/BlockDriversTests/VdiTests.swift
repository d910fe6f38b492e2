@testable import BlockDrivers
import BlockCore
import XCTest

/// VDI header layout and validation.
final class VdiTests: XCTestCase {
    func testNewHeaderLaysOutLikeQemu() throws {
        let header = VdiHeader(size: 5 << 20, isStatic: false)
        XCTAssertEqual(header.blocksInImage, 5)
        XCTAssertEqual(header.offsetBmap, 0x200)
        XCTAssertEqual(header.offsetData, 0x400)
        let parsed = try VdiHeader.parse(header.bytes())
        XCTAssertEqual(parsed.size, 5 << 20)
        XCTAssertEqual(parsed.imageType, VdiHeader.typeDynamic)
        XCTAssertEqual(VdiHeader(size: 3 << 20, isStatic: true).blocksAllocated, 3)
    }

    func testOddSizesRoundUpAndBadFieldsAreRefused() throws {
        var bytes = VdiHeader(size: 3 << 20, isStatic: false).bytes()
        bytes.replaceSubrange(368..<376, with: [1, 0, 0x20, 0, 0, 0, 0, 0])  // disk size 2 MiB + 1
        XCTAssertEqual(try VdiHeader.parse(bytes).size, (2 << 20) + 512)
        bytes[64] = 0
        XCTAssertThrowsError(try VdiHeader.parse(bytes)) { error in
            XCTAssertTrue((error as? BlockError)?.message.hasPrefix("Image not in VDI format (bad signature") == true)
        }
        XCTAssertThrowsError(try VdiHeader.parse([UInt8](repeating: 0, count: 100)))
    }
}
