#if canImport(Glibc)
import Glibc
#endif
import BlockCore
@testable import BlockDrivers
import BlockTestSupport
import XCTest

/// Header and table parsing of the read-only formats (bochs, cloop, dmg) on images built in memory.
final class ReadOnlyFormatsTests: XCTestCase {
    private func node(_ bytes: [UInt8]) throws -> BlockNode {
        let memory = MemoryDriver(length: bytes.count)
        try bytes.withUnsafeBytes { try memory.write($0, at: 0, fua: false) }
        return BlockNode(name: "image", driver: memory, readOnly: true)
    }

    private func le32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }
    private func be32(_ value: UInt32) -> [UInt8] { (0..<4).reversed().map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }
    private func be64(_ value: UInt64) -> [UInt8] { (0..<8).reversed().map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) } }

    /// A bochs header: 4 extents of 4 KiB, a 512-byte bitmap each; extent 1 stored as block 0 with
    /// sectors 0 and 2 present.
    private func bochsImage() -> [UInt8] {
        var header = [UInt8](repeating: 0, count: 512)
        func put(_ text: String, _ at: Int) { header.replaceSubrange(at..<at + text.utf8.count, with: Array(text.utf8)) }
        put("Bochs Virtual HD Image", 0)
        put("Redolog", 32)
        put("Growing", 48)
        header.replaceSubrange(64..<68, with: le32(0x20000))
        header.replaceSubrange(68..<72, with: le32(512))
        header.replaceSubrange(72..<76, with: le32(4))
        header.replaceSubrange(76..<80, with: le32(512))
        header.replaceSubrange(80..<84, with: le32(4096))
        header.replaceSubrange(88..<96, with: (0..<8).map { UInt8(truncatingIfNeeded: UInt64(16384) >> (8 * UInt64($0))) })
        let catalog = le32(0xffff_ffff) + le32(0) + le32(0xffff_ffff) + le32(0xffff_ffff)
        var bitmap = [UInt8](repeating: 0, count: 512)
        bitmap[0] = 0b101
        let data = (0..<4096).map { UInt8(truncatingIfNeeded: $0 / 512 + 1) }
        return header + catalog + bitmap + data
    }

    func testBochsHeaderAndReads() throws {
        let image = bochsImage()
        let header = try BochsHeader.parse(Array(image[0..<512]))
        XCTAssertEqual(header.diskSize, 16384)
        XCTAssertEqual(header.dataOffset, 512 + 16)
        XCTAssertEqual(BochsDriver.probe(image, "x"), 100)
        let driver = BochsDriver(file: try node(image), header: header, catalog: [0xffff_ffff, 0, 0xffff_ffff, 0xffff_ffff])
        var bytes = [UInt8](repeating: 0xee, count: 16384)
        try bytes.withUnsafeMutableBytes { try driver.read(into: $0, at: 0) }
        var expected = [UInt8](repeating: 0, count: 16384)
        expected.replaceSubrange(4096..<4608, with: [UInt8](repeating: 1, count: 512))
        expected.replaceSubrange(5120..<5632, with: [UInt8](repeating: 3, count: 512))
        XCTAssertEqual(bytes, expected, "absent extents and absent sectors read as zeroes")
        let extents = try driver.blockStatus(at: 0, length: 16384)
        XCTAssertEqual(extents.map(\.length).reduce(0, +), 16384)
        XCTAssertEqual(extents[1], .data(512, hostOffset: 528 + 512))
    }

    func testBochsRefusals() {
        var image = bochsImage()
        image[0] = UInt8(ascii: "b")
        XCTAssertThrowsError(try BochsHeader.parse(Array(image[0..<512]))) { XCTAssertEqual(($0 as? BlockError)?.message, "Image not in Bochs format") }
        image = bochsImage()
        image.replaceSubrange(72..<76, with: le32(1))
        XCTAssertThrowsError(try BochsHeader.parse(Array(image[0..<512]))) {
            XCTAssertEqual(($0 as? BlockError)?.message, "Catalog size is too small for this disk size")
        }
        image = bochsImage()
        image.replaceSubrange(80..<84, with: le32(100))
        XCTAssertThrowsError(try BochsHeader.parse(Array(image[0..<512]))) {
            XCTAssertEqual(($0 as? BlockError)?.message, "Extent size must be at least 512")
        }
        XCTAssertEqual(BochsDriver.probe(Array(image[0..<40]), "x"), 0)
    }

    func testCloopParsingAndRefusals() throws {
        var head = [UInt8](repeating: 0, count: 128)
        head.replaceSubrange(0..<CloopDriver.magic.count, with: CloopDriver.magic)
        XCTAssertEqual(CloopDriver.probe(head, "x"), 2)
        XCTAssertEqual(CloopDriver.probe([], "x"), 0)
        let parsed = try CloopDriver.parse(try node(head + be32(512) + be32(2) + be64(160) + be64(170) + be64(180)))
        XCTAssertEqual(parsed.blockSize, 512)
        XCTAssertEqual(parsed.offsets, [160, 170, 180])
        XCTAssertThrowsError(try CloopDriver.parse(try node(head + be32(513) + be32(0) + be64(0)))) {
            XCTAssertEqual(($0 as? BlockError)?.message, "block_size 513 must be a multiple of 512")
        }
        XCTAssertThrowsError(try CloopDriver.parse(try node(head + be32(512) + be32(2) + be64(160) + be64(150) + be64(180)))) {
            XCTAssertEqual(($0 as? BlockError)?.message, "offsets not monotonically increasing at index 1, image file is corrupt")
        }
        XCTAssertThrowsError(try CloopDriver.parse(try node(head + be32(512) + be32(1000) + be64(0))), "a table past the end")
    }

    func testDmgBase64AndSearch() {
        XCTAssertEqual(Base64.decode(ArraySlice(Array("\n\t\tbWlz\naA==\n".utf8)), strict: false), Array("mish".utf8))
        XCTAssertNil(Base64.decode(Array("bWlz aA==".utf8), strict: true))
        XCTAssertNil(Base64.decode(Array("bW=lz".utf8), strict: true))
        XCTAssertEqual(Base64.decode(Array("czNjcmV0".utf8), strict: true), Array("s3cret".utf8))
        XCTAssertEqual(DmgTable.find(Array("</data>".utf8), in: Array("ab</data>".utf8), from: 0), 2)
        XCTAssertNil(DmgTable.find(Array("</data>".utf8), in: Array("ab</dat".utf8), from: 0))
        XCTAssertEqual(DmgDriver.probe([], "disk.dmg"), 2)
        XCTAssertEqual(DmgDriver.probe([], ".dmg"), 0)
        XCTAssertEqual(DmgDriver.probe([], "disk.img"), 0)
    }

    func testDmgTrailerRefusals() throws {
        XCTAssertThrowsError(try DmgTable.read(try node([UInt8](repeating: 0, count: 100)))) {
            XCTAssertEqual(($0 as? BlockError)?.message, "dmg file must be at least 512 bytes long")
        }
        XCTAssertThrowsError(try DmgTable.read(try node([UInt8](repeating: 0, count: 4096)))) {
            XCTAssertEqual(($0 as? BlockError)?.message, "Could not locate UDIF trailer in dmg file")
        }
    }

    func testChunkTableLookup() {
        var table = DmgTable()
        table.chunks = [
            DmgChunk(type: DmgChunk.raw, sector: 0, sectorCount: 4, offset: 0, length: 2048),
            DmgChunk(type: DmgChunk.zeroes, sector: 4, sectorCount: 4, offset: 0, length: 0),
            DmgChunk(type: DmgChunk.zlib, sector: 10, sectorCount: 2, offset: 2048, length: 10),
        ]
        XCTAssertEqual(table.chunkIndex(holding: 0), 0)
        XCTAssertEqual(table.chunkIndex(holding: 7), 1)
        XCTAssertNil(table.chunkIndex(holding: 8), "a sector between chunks is in none")
        XCTAssertEqual(table.chunkIndex(holding: 11), 2)
        XCTAssertNil(table.chunkIndex(holding: 12))
    }
}
