import BlockCore
import BlockDrivers
import Foundation
import ImageTool
import XCTest

final class ImageToolTests: XCTestCase {
    private var directory: String!

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "blockimg-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: directory)
    }

    func testSizesParseLikeQemuImg() {
        XCTAssertEqual(Sizes.parse("512"), 512)
        XCTAssertEqual(Sizes.parse("64k"), 65536)
        XCTAssertEqual(Sizes.parse("1.5M"), 1_572_864)
        XCTAssertEqual(Sizes.parse("2G"), 2 << 30)
        XCTAssertEqual(Sizes.parse("1T"), 1 << 40)
        XCTAssertNil(Sizes.parse("12Q"))
        XCTAssertNil(Sizes.parse("-1"))
        XCTAssertNil(Sizes.parse(""))
    }

    func testHumanSizesUseThreeSignificantDigits() {
        XCTAssertEqual(Sizes.human(10 << 20), "10 MiB")
        XCTAssertEqual(Sizes.human(331_776), "324 KiB")
        XCTAssertEqual(Sizes.human(1_000 << 10), "0.977 MiB")
        XCTAssertEqual(Sizes.human(512), "512 B")
        XCTAssertEqual(Sizes.human(3 << 30), "3 GiB")
    }

    func testDefaultLayoutPutsTablesInTheFirstClusters() throws {
        let plan = try Qcow2Create.layout(Qcow2CreateOptions(size: 1 << 30))
        XCTAssertEqual(plan.fileLength, 4 * 65536)
        XCTAssertEqual(plan.regions.map(\.offset).sorted(), [0, 65536, 131_072, 196_608])
        XCTAssertTrue(plan.dataRanges.isEmpty)
    }

    func testInvalidCombinationsAreRefused() {
        var options = Qcow2CreateOptions(size: 1 << 20)
        options.version = 2
        options.lazyRefcounts = true
        XCTAssertThrowsError(try Qcow2Create.layout(options))
        options = Qcow2CreateOptions(size: 1 << 20)
        options.clusterSize = 3000
        XCTAssertThrowsError(try Qcow2Create.layout(options))
        options = Qcow2CreateOptions(size: 1 << 20)
        options.refcountBits = 128
        XCTAssertThrowsError(try Qcow2Create.layout(options))
        options = Qcow2CreateOptions(size: 1 << 20)
        options.backingFile = "base.qcow2"
        options.preallocation = .metadata
        XCTAssertThrowsError(try Qcow2Create.layout(options))
    }

    func testCreatedImagesOpenAndKeepWhatIsWritten() throws {
        for (bits, cluster, prealloc) in [(1, 512, "metadata"), (16, 65536, "off"), (64, 4096, "full"), (4, 8192, "off")] {
            let path = directory + "/img-\(bits)-\(cluster).qcow2"
            _ = try CreateCommand(
                path: path, format: "qcow2", size: "3M",
                options: ["cluster_size=\(cluster),refcount_bits=\(bits),preallocation=\(prealloc)"],
                backingFile: nil, backingFormat: nil, unsafe: false
            ).run()
            let image = try ImageFiles.open(path, format: nil, readOnly: false)
            XCTAssertEqual(image.format, "qcow2")
            XCTAssertEqual(image.node.length, 3 << 20)
            let pattern = [UInt8](repeating: 0x5a, count: 10_000)
            try pattern.withUnsafeBytes { try image.node.write($0, at: 123_456, fua: false) }
            image.close()
            let again = try ImageFiles.open(path, format: "qcow2", readOnly: true)
            var back = [UInt8](repeating: 0, count: 10_000)
            try back.withUnsafeMutableBytes { try again.node.read(into: $0, at: 123_456) }
            XCTAssertEqual(back, pattern)
            again.close()
        }
    }

    func testBadCreateInputCreatesNothing() {
        let path = directory + "/bad.qcow2"
        for options in [["bogus=1"], ["cluster_size=1k5"], ["compat=2.0"], ["lazy_refcounts=maybe"]] {
            XCTAssertThrowsError(try CreateCommand(
                path: path, format: "qcow2", size: "1M", options: options, backingFile: nil, backingFormat: nil, unsafe: false
            ).run())
            XCTAssertFalse(FileManager.default.fileExists(atPath: path))
        }
    }
}
