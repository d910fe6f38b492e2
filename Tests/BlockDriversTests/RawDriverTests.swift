#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock
import BlockDrivers
import BlockTestSupport
import XCTest

/// The `raw` format's window (`offset`, `size`) over its child.
final class RawDriverTests: XCTestCase {
    private var memory: MemoryDriver!
    private var child: BlockNode!

    override func setUp() {
        memory = MemoryDriver(length: 64 * 1024)
        child = BlockNode(name: "mem", driver: memory, readOnly: false)
        let pattern = (0..<64 * 1024).map { UInt8(truncatingIfNeeded: $0 / 256) }
        try! pattern.withUnsafeBytes { try memory.write($0, at: 0, fua: false) }
    }

    func testAWindowReadsAndWritesTheChildAtItsOffset() throws {
        let raw = RawDriver(child: child, offset: 4096, size: 8192)
        XCTAssertEqual(raw.length, 8192)
        var read = [UInt8](repeating: 0, count: 512)
        try read.withUnsafeMutableBytes { try raw.read(into: $0, at: 256) }
        XCTAssertEqual(read, [UInt8](repeating: 17, count: 256) + [UInt8](repeating: 18, count: 256), "child bytes 4352..<4864")
        try [UInt8](repeating: 0xee, count: 10).withUnsafeBytes { try raw.write($0, at: 100, fua: false) }
        XCTAssertEqual(Array(memory.contents[4196..<4206]), [UInt8](repeating: 0xee, count: 10))
        XCTAssertEqual(memory.contents[4195], 16, "nothing before the window's offset is touched")
        try raw.writeZeroes(at: 8000, length: 192, flags: [])
        XCTAssertEqual(Array(memory.contents[12096..<12288]), [UInt8](repeating: 0, count: 192))
        XCTAssertEqual(memory.contents[12288], 48, "zeroes stop at the window's end")
    }

    func testWithoutASizeTheWindowRunsToTheChildsEnd() throws {
        XCTAssertEqual(RawDriver(child: child, offset: 4096, size: nil).length, 60 * 1024)
        XCTAssertEqual(RawDriver(child: child, offset: 0, size: nil).length, 64 * 1024)
        XCTAssertEqual(RawDriver(child: child, offset: 128 * 1024, size: nil).length, 0, "an offset past the end leaves nothing")
    }

    func testAFixedSizeCannotBeResizedAndAnOpenOneResizesTheChild() throws {
        let fixed = RawDriver(child: child, offset: 4096, size: 8192)
        XCTAssertThrowsError(try fixed.resize(to: 16384)) { XCTAssertEqual(($0 as? BlockError)?.errno, ENOTSUP) }
        XCTAssertEqual(memory.length, 64 * 1024, "the refused resize changed nothing")
        let open = RawDriver(child: child, offset: 4096, size: nil)
        try open.resize(to: 100 * 1024)
        XCTAssertEqual(memory.length, 104 * 1024, "the child grows to offset + size")
        XCTAssertEqual(open.length, 100 * 1024)
    }

    func testTheOpenerRefusesAWindowPastTheEnd() throws {
        let graph = BlockGraph(drivers: Drivers.all)
        defer { graph.closeAll() }
        _ = try graph.open(try KeyValueParser.parse("driver=null-co,node-name=n0,size=65536"))
        XCTAssertThrowsError(try graph.open(try KeyValueParser.parse("driver=raw,node-name=r0,file=n0,offset=61440,size=8192"))) {
            XCTAssertTrue("\($0)".contains("past the end of 'n0'"), "\($0)")
        }
        XCTAssertNil(graph.node(named: "r0"))
        let window = try graph.open(try KeyValueParser.parse("driver=raw,node-name=r1,file=n0,offset=61440,size=4096"))
        XCTAssertEqual(window.length, 4096)
    }
}
