import BlockCore
import BlockDrivers
import XCTest
import LogOptionsClock

final class GraphTests: XCTestCase {
    private var directory: String!

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "blockd-graph-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func image(_ size: Int) -> String {
        let path = directory + "/disk.img"
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        let handle = FileHandle(forWritingAtPath: path)!
        handle.truncateFile(atOffset: UInt64(size))
        handle.closeFile()
        return path
    }

    func testRawWindowOverFileWithInlineChild() throws {
        let path = image(1 << 20)
        let graph = BlockGraph(drivers: Drivers.all)
        let node = try graph.open(try KeyValueParser.parse(
            "driver=raw,node-name=win,offset=4096,size=8192,file.driver=file,file.filename=\(path),file.node-name=f0"))
        XCTAssertEqual(node.length, 8192)
        XCTAssertNotNil(graph.node(named: "f0"))
        let pattern = [UInt8](repeating: 0x5a, count: 512)
        try pattern.withUnsafeBytes { try node.write($0, at: 512, fua: true) }
        let onDisk = try Data(contentsOf: URL(fileURLWithPath: path))
        XCTAssertEqual(Array(onDisk[4608..<5120]), pattern)
        XCTAssertEqual(onDisk[4607], 0)
        graph.closeAll()
    }

    func testErrorsNameNodeAndKey() throws {
        let graph = BlockGraph(drivers: Drivers.all)
        XCTAssertThrowsError(try graph.open(try KeyValueParser.parse("driver=file,node-name=f0,filenme=x"))) {
            XCTAssertEqual("\($0)", "--blockdev 'f0' (driver file): unknown parameter 'filenme'")
        }
        XCTAssertThrowsError(try graph.open(try KeyValueParser.parse("driver=file,node-name=f0"))) {
            XCTAssertEqual("\($0)", "--blockdev 'f0' (driver file): parameter 'filename' is missing")
        }
        let path = image(4096)
        XCTAssertThrowsError(try graph.open(try KeyValueParser.parse("driver=file,node-name=f0,filename=\(path),bogus=1"))) {
            XCTAssertEqual("\($0)", "--blockdev 'f0' (driver file): unknown parameter 'bogus'")
        }
        XCTAssertNil(graph.node(named: "f0"), "a failed open leaves nothing behind")
        XCTAssertThrowsError(try graph.open(try KeyValueParser.parse("driver=qcow9,node-name=x")))
        XCTAssertThrowsError(try graph.open(try KeyValueParser.parse("driver=raw,node-name=r,file=missing"))) {
            XCTAssertEqual("\($0)", "--blockdev 'r' (driver raw): parameter 'file': no node named 'missing'")
        }
        XCTAssertThrowsError(try graph.open(try KeyValueParser.parse("driver=null-co,node-name=1bad")))
        try graph.open(try KeyValueParser.parse("driver=null-co,node-name=n"))
        XCTAssertThrowsError(try graph.open(try KeyValueParser.parse("driver=null-co,node-name=n"))) {
            XCTAssertEqual("\($0)", "--blockdev: node-name 'n' is already in use")
        }
    }

    func testRemovingANodeTakesItsInlineChildrenAndRespectsUsers() throws {
        let path = image(1 << 20)
        let graph = BlockGraph(drivers: Drivers.all)
        try graph.open(try KeyValueParser.parse("driver=raw,node-name=top,file.driver=file,file.filename=\(path),file.node-name=inner"))
        try graph.open(try KeyValueParser.parse("driver=null-co,node-name=base"))
        try graph.open(try KeyValueParser.parse("driver=raw,node-name=over,file=base"))
        XCTAssertThrowsError(try graph.remove("base")) {
            XCTAssertEqual("\($0)", "node 'base' is used by node 'over'")
        }
        try graph.remove("top")
        XCTAssertNil(graph.node(named: "inner"))
        try graph.remove("over")
        try graph.remove("base")
        XCTAssertTrue(graph.allNodes.isEmpty)
    }

    func testFileBlockStatusSeesHolesAndData() throws {
        let path = image(4 << 20)
        let graph = BlockGraph(drivers: Drivers.all)
        let node = try graph.open(try KeyValueParser.parse("driver=file,node-name=f,filename=\(path)"))
        let data = [UInt8](repeating: 1, count: 1 << 20)
        try data.withUnsafeBytes { try node.write($0, at: 1 << 20, fua: false) }
        let first = try node.blockStatus(at: 0, length: 4 << 20)
        XCTAssertEqual(first.first, .fileHole(1 << 20))
        let second = try node.blockStatus(at: 1 << 20, length: 3 << 20)
        XCTAssertEqual(second.first?.hole, false)
        XCTAssertEqual(second.first?.length, 1 << 20)
        try node.writeZeroes(at: 1 << 20, length: 1 << 20, flags: [.mayUnmap])
        var back = [UInt8](repeating: 9, count: 1 << 20)
        try back.withUnsafeMutableBytes { try node.read(into: $0, at: 1 << 20) }
        XCTAssertTrue(back.allSatisfy { $0 == 0 })
        graph.closeAll()
    }

    func testDirectIOBouncesUnalignedRequests() throws {
        let path = image(1 << 20)
        let graph = BlockGraph(drivers: Drivers.all)
        let node: BlockNode
        do {
            node = try graph.open(try KeyValueParser.parse("driver=file,node-name=d,filename=\(path),cache.direct=on"))
        } catch {
            throw XCTSkip("O_DIRECT is not available here: \(error)")
        }
        let bytes = (0..<777).map { UInt8(truncatingIfNeeded: $0) }
        try bytes.withUnsafeBytes { try node.write($0, at: 1001, fua: false) }
        var back = [UInt8](repeating: 0, count: 777)
        try back.withUnsafeMutableBytes { try node.read(into: $0, at: 1001) }
        XCTAssertEqual(back, bytes)
        graph.closeAll()
    }
}
