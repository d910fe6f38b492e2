@testable import BlockDrivers
import BlockCore
import XCTest

/// VHD footer checksum, geometry and the size rule.
final class VpcTests: XCTestCase {
    func testGeometryOfTheSpecification() {
        // 5 MiB (10240 sectors) rounds down to 150 × 4 × 17; create tries more sectors until
        // 151 × 4 × 17 = 10268 (qemu-img's 5257216 bytes).
        let down = VpcFooter.geometry(sectors: 10240)
        XCTAssertEqual(UInt64(down.cylinders) * UInt64(down.heads) * UInt64(down.sectors), 10200)
        let small = VpcFooter.geometry(sectors: 10268)
        XCTAssertEqual(UInt64(small.cylinders) * UInt64(small.heads) * UInt64(small.sectors), 10268)
        let huge = VpcFooter.geometry(sectors: VpcFooter.maxGeometry + 1)
        XCTAssertEqual(huge.cylinders, 65535)
        XCTAssertEqual(huge.heads, 16)
        XCTAssertEqual(huge.sectors, 255)
    }

    func testFooterChecksumAndSizeRule() {
        let geometry = VpcFooter.geometry(sectors: 10268)
        var footer = VpcFooter.make(size: 10268 * 512, geometry: geometry, dynamic: true, forceSize: false)
        XCTAssertTrue(footer.checksumValid)
        XCTAssertEqual(footer.sectors, 10268)
        footer.bytes[30] = 0x78  // "qexu": still CHS
        XCTAssertFalse(footer.checksumValid)
        let forced = VpcFooter.make(size: 5 << 20, geometry: (65535, 16, 255), dynamic: false, forceSize: true)
        XCTAssertEqual(forced.sectors, (5 << 20) / 512)
    }
}
