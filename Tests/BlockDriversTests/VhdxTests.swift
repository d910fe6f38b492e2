@testable import BlockDrivers
import BlockCore
import XCTest

/// VHDX checksums, GUIDs, BAT indexing and log entry parsing.
final class VhdxTests: XCTestCase {
    func testCRC32CKnownValue() {
        XCTAssertEqual(VhdxBytes.crc32c(Array("123456789".utf8)), 0xe306_9283)
    }

    func testGUIDBytesAreMicrosoftOrder() {
        XCTAssertEqual(VhdxGUID.bat.bytes.prefix(4), [0x66, 0x77, 0xc2, 0x2d])
    }

    func testBATIndexSkipsBitmapEntries() {
        let parameters = VhdxParameters(blockSize: 1 << 20, leaveBlocksAllocated: false, hasParent: false,
                                        virtualSize: 8 << 30, logicalSectorSize: 512, physicalSectorSize: 512,
                                        page83: [UInt8](repeating: 0, count: 16))
        XCTAssertEqual(parameters.chunkRatio, 4096)
        XCTAssertEqual(parameters.batIndex(ofBlock: 4095), 4095)
        XCTAssertEqual(parameters.batIndex(ofBlock: 4096), 4097)
        XCTAssertEqual(parameters.batEntries, 8192 + 1)
    }

    func testLogEntryParsesAndChecksumMatters() {
        let guid = VhdxGUID.random()
        var entry = [UInt8](repeating: 0, count: 8192)
        VhdxBytes.put(VhdxLog.entrySignature, &entry, 0)
        VhdxBytes.put(UInt32(8192), &entry, 8)
        VhdxBytes.put(UInt64(7), &entry, 16)
        VhdxBytes.put(UInt32(1), &entry, 24)
        entry.replaceSubrange(32..<48, with: guid.bytes)
        VhdxBytes.put(VhdxLog.dataDescriptorSignature, &entry, 64)
        VhdxBytes.put(UInt32(0xaabb_ccdd), &entry, 68)
        VhdxBytes.put(UInt64(0x1122_3344_5566_7788), &entry, 72)
        VhdxBytes.put(UInt64(1 << 20), &entry, 80)
        VhdxBytes.put(UInt64(7), &entry, 88)
        VhdxBytes.put(VhdxLog.dataSectorSignature, &entry, 4096)
        VhdxBytes.put(UInt32(0), &entry, 4100)
        entry[4200] = 0x42
        VhdxBytes.put(UInt32(7), &entry, 8188)
        VhdxBytes.seal(&entry, checksumAt: 4)
        var log = entry + [UInt8](repeating: 0, count: (1 << 20) - entry.count)
        let parsed = VhdxLog(bytes: log, guid: guid).activeSequence()
        XCTAssertEqual(parsed.count, 1)
        guard case .data(let offset, let sector) = parsed.first?.changes.first else { return XCTFail("no data change") }
        XCTAssertEqual(offset, 1 << 20)
        XCTAssertEqual(VhdxBytes.u64(sector, 0), 0x1122_3344_5566_7788)
        XCTAssertEqual(VhdxBytes.u32(sector, 4092), 0xaabb_ccdd)
        XCTAssertEqual(sector[104], 0x42)
        log[5000] ^= 1
        XCTAssertTrue(VhdxLog(bytes: log, guid: guid).activeSequence().isEmpty)
        XCTAssertTrue(VhdxLog(bytes: entry + [UInt8](repeating: 0, count: 4096), guid: .random()).activeSequence().isEmpty)
    }
}
