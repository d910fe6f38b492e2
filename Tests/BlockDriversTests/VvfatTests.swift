@testable import BlockDrivers
import XCTest

/// vvfat's directory entries: QEMU's short names with numeric tails, VFAT long-name entries.
final class VvfatTests: XCTestCase {
    private func short(_ name: String) -> String {
        String(decoding: VvfatNames.shortBase(name).name, as: UTF8.self)
    }

    func testShortNamesAreUpperCasedAndSplitAtTheLastDot() {
        XCTAssertEqual(short("readme.txt"), "README  TXT")
        XCTAssertFalse(VvfatNames.shortBase("readme.txt").lossy)
        XCTAssertEqual(short("a.b.c"), "A       C  ")
        XCTAssertTrue(VvfatNames.shortBase("a.b.c").lossy, "a second dot loses the middle part")
        XCTAssertEqual(short(".hidden"), "HIDDEN     ")
        XCTAssertTrue(VvfatNames.shortBase(".hidden").lossy)
        XCTAssertEqual(short("Long File Name.text"), "LONGFILETEX")
        XCTAssertTrue(VvfatNames.shortBase("x+y").lossy, "'+' is not kept")
    }

    func testNumericTails() {
        let base = VvfatNames.shortBase("verylongname.txt").name
        XCTAssertEqual(String(decoding: VvfatNames.withTail(base, baseLength: 8, number: 1), as: UTF8.self), "VERYLO~1TXT")
        let shortBase = VvfatNames.shortBase("ab.c").name
        XCTAssertEqual(String(decoding: VvfatNames.withTail(shortBase, baseLength: 2, number: 12), as: UTF8.self), "AB~12   C  ")
    }

    func testLongNameEntries() {
        let entries = VvfatNames.longEntries("Long File Name.txt")
        XCTAssertEqual(entries.count, 2)
        XCTAssertEqual(entries[0][0], 0x42, "the last part comes first, marked 0x40")
        XCTAssertEqual(entries[1][0], 0x01)
        XCTAssertEqual(entries[1][1], UInt8(ascii: "L"))
        XCTAssertEqual(entries[0][11], 0x0f)
        // 18 characters: the second entry holds 5 of them, the terminator, then 0xffff padding.
        XCTAssertEqual(entries[0][1], UInt8(ascii: "e"))
        XCTAssertEqual(Array(entries[0][14..<16]), [0, 0], "the terminator after the 18th character")
        XCTAssertEqual(Array(entries[0][16..<26]) + Array(entries[0][28..<32]), [UInt8](repeating: 0xff, count: 14))
    }

    func testChecksumOfAShortName() {
        XCTAssertEqual(VvfatNames.checksum(ArraySlice(Array("README  TXT".utf8))), 0x73)
    }
}
