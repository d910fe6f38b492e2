#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import BlockDrivers
import XCTest

final class VmdkTests: XCTestCase {
    private func parse(_ text: String) throws -> VmdkDescriptor {
        try VmdkDescriptor.parse(Array(text.utf8))
    }

    func testDescriptorOfQemuImgParses() throws {
        let descriptor = try parse("""
            # Disk DescriptorFile
            version=1
            CID=55eb2b4a
            parentCID=ffffffff
            createType="twoGbMaxExtentSparse"
            parentFileNameHint="base.vmdk"

            # Extent description
            RW 4194304 SPARSE "t-s001.vmdk"
            RW 2048 FLAT "t-flat.vmdk" 1024
            RW 2048 ZERO

            # The Disk Data Base
            #DDB

            ddb.adapterType = "ide"

            """)
        XCTAssertEqual(descriptor.cid, 0x55eb2b4a)
        XCTAssertEqual(descriptor.parentCID, 0xffffffff)
        XCTAssertEqual(descriptor.createType, "twoGbMaxExtentSparse")
        XCTAssertEqual(descriptor.parentFileNameHint, "base.vmdk")
        XCTAssertEqual(descriptor.extents, [
            VmdkExtentLine(type: "SPARSE", sectors: 4194304, fileName: "t-s001.vmdk"),
            VmdkExtentLine(type: "FLAT", sectors: 2048, fileName: "t-flat.vmdk", offset: 1024),
            VmdkExtentLine(type: "ZERO", sectors: 2048, fileName: nil),
        ])
    }

    func testWindowsLineEndsNulPaddingAndSkippedLines() throws {
        var bytes = Array("version=1\r\nCID=0x1f\r\nparentCID=ffffffff\r\ncreateType=\"monolithicFlat\"\r\n".utf8)
        bytes += Array("RDONLY 100 FLAT \"a\" 0\r\nNOACCESS 100 FLAT \"b\" 0\r\nRW 0 FLAT \"c\" 0\r\nRW 8 FLAT \"d\" 0\r\n".utf8)
        bytes += Array("RW 8 VMFSRAW \"e\"\r\n".utf8) + [0, 0] + Array("RW 8 FLAT \"after-nul\" 0\n".utf8)
        let descriptor = try VmdkDescriptor.parse(bytes)
        XCTAssertEqual(descriptor.cid, 0x1f)
        XCTAssertEqual(descriptor.extents, [VmdkExtentLine(type: "FLAT", sectors: 8, fileName: "d", offset: 0)])
    }

    func testInvalidDescriptorsAreRefusedWithQemuWords() {
        let head = "version=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n"
        for (text, message) in [
            (head + "RW 8 FLAT \"x\"\n", "Invalid extent line: RW 8 FLAT \"x\""),
            (head + "RW 8 FLAT \"x\" -1\n", "Invalid extent line"),
            (head + "RW 8 SPARSE \"x\" 5\n", "Invalid extent line"),
            (head + "RW 8 SPARSE \"x\n", "Invalid extent line"),
            ("version=1\nCID=zz\nparentCID=1\ncreateType=\"vmfs\"\n", "no valid CID"),
        ] {
            XCTAssertThrowsError(try parse(text), text) { error in
                let blockError = error as? BlockError
                XCTAssertEqual(blockError?.errno, EINVAL)
                XCTAssertTrue(blockError?.message.contains(message) ?? false, "\(blockError?.message ?? "") for \(text)")
            }
        }
    }

    func testEmbeddedDescriptorMayLackTheCreateType() throws {
        let descriptor = try parse("version=1\nCID=1\nparentCID=2\n")
        XCTAssertEqual(descriptor.createType, "")
        XCTAssertEqual(descriptor.parentCID, 2)
        XCTAssertThrowsError(try parse("version=1\nCID=1\n"), "parentCID is required")
    }

    func testCIDIsReplacedInPlace() {
        let text = Array("# Disk DescriptorFile\nversion=1\nCID=abc\nparentCID=ffffffff\n".utf8) + [0, 0, 0]
        let updated = VmdkDescriptor.replacingCID(in: text, with: 0x1234)
        XCTAssertEqual(updated.map { String(decoding: $0, as: UTF8.self) }, "# Disk DescriptorFile\nversion=1\nCID=1234\nparentCID=ffffffff\n")
        XCTAssertNil(VmdkDescriptor.replacingCID(in: Array("parentCID=1\n".utf8), with: 1))
    }

    func testRenderedDescriptorIsQemus() {
        let descriptor = VmdkDescriptor(
            cid: 0x55eb2b4a, parentCID: 0xffffffff, createType: "monolithicSparse", parentFileNameHint: nil,
            extents: [VmdkExtentLine(type: "SPARSE", sectors: 20480, fileName: "a.vmdk")])
        XCTAssertEqual(descriptor.rendered(hardwareVersion: "4", adapterType: "ide", toolsVersion: "2147483647", size: 10 << 20), """
            # Disk DescriptorFile
            version=1
            CID=55eb2b4a
            parentCID=ffffffff
            createType="monolithicSparse"

            # Extent description
            RW 20480 SPARSE "a.vmdk"

            # The Disk Data Base
            #DDB

            ddb.virtualHWVersion = "4"
            ddb.geometry.cylinders = "20"
            ddb.geometry.heads = "16"
            ddb.geometry.sectors = "63"
            ddb.adapterType = "ide"
            ddb.toolsVersion = "2147483647"

            """)
    }

    func testSparseHeaderRoundTripsAndIsValidated() throws {
        let header = VmdkSparseHeader(
            version: 1, flags: 3, capacity: 20480, grainSectors: 128, descriptorOffset: 1, descriptorSize: 20, gtesPerGT: 512,
            rgdOffset: 21, gdOffset: 26, grainOffset: 128, compressAlgorithm: 0)
        let bytes = header.serialized()
        XCTAssertEqual(Array(bytes[0..<4]), Array("KDMV".utf8))
        XCTAssertEqual(Array(bytes[73..<77]), [0x0a, 0x20, 0x0d, 0x0a])
        XCTAssertEqual(try VmdkSparseHeader.parse(bytes), header)
        XCTAssertNoThrow(try header.validate(fileLength: 65536, writable: true))
        var bad = header
        bad.gtesPerGT = 513
        XCTAssertThrowsError(try bad.validate(fileLength: 65536, writable: true))
        bad = header
        bad.version = 3
        XCTAssertThrowsError(try bad.validate(fileLength: 65536, writable: true))
        XCTAssertNoThrow(try bad.validate(fileLength: 65536, writable: false))
        XCTAssertThrowsError(try header.validate(fileLength: 4096, writable: false), "file shorter than the grain offset")
        bad = header
        bad.gdOffset = 1 << 40
        XCTAssertThrowsError(try bad.validate(fileLength: 65536, writable: false), "directory past the end")
        XCTAssertThrowsError(try VmdkSparseHeader.parse(Array("QFI\u{fb}".utf8) + bytes[4...]))
    }

    func testProbeFollowsQemu() {
        XCTAssertEqual(VmdkFormat.probe(Array("KDMV".utf8) + [1, 0, 0, 0], "x"), 100)
        XCTAssertEqual(VmdkFormat.probe(Array("# Disk DescriptorFile\n   \nversion=1\nCID=1\n".utf8), "x"), 100)
        XCTAssertEqual(VmdkFormat.probe(Array("#c\r\nversion=3\r\n".utf8), "x"), 100)
        XCTAssertEqual(VmdkFormat.probe(Array("\nversion=1\n".utf8), "x"), 0, "an empty line before version= is not a descriptor")
        XCTAssertEqual(VmdkFormat.probe(Array("version=4\n".utf8), "x"), 0)
        XCTAssertEqual(VmdkFormat.probe(Array("  x\nversion=1\n".utf8), "x"), 0)
    }
}
