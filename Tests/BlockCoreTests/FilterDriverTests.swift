import BlockCore
import BlockDrivers
import Synchronization
import XCTest

/// A leaf that remembers every operation it receives and answers each one recognisably (a hole
/// where the leaf default says data, a size where it says unknown), and maps its bytes.
///
/// `@unchecked Sendable`: the storage is raw memory that the tests use from one thread at a time;
/// the size and the log are in `Mutex`es.
private final class LoggingLeaf: BlockDriver, @unchecked Sendable {
    let driverName = "logging"
    let features: DriverFeatures
    private let storage: UnsafeMutableRawBufferPointer
    private let size = Mutex<UInt64>(1 << 16)
    private let log = Mutex<[String]>([])

    init() {
        storage = .allocate(byteCount: 1 << 16, alignment: 4096)
        storage.initializeMemory(as: UInt8.self, repeating: 0)
        var features = DriverFeatures()
        features.discard = true
        features.fastZero = true
        features.fua = .native
        features.blockStatus = true
        features.writeThresholdOnFile = true
        features.maxTransfer = 1 << 16
        self.features = features
    }

    deinit { storage.deallocate() }

    /// The operations received so far, and forgets them.
    func take() -> [String] {
        log.withLock { entries in
            defer { entries.removeAll() }
            return entries
        }
    }
    private func note(_ entry: String) { log.withLock { $0.append(entry) } }

    var length: UInt64 { size.withLock { $0 } }
    var filename: String { "/images/leaf.img" }
    var allocatedSize: UInt64? { 12_345 }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        note("read \(offset)+\(buffer.count)")
        buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: storage[Int(offset)..<Int(offset) + buffer.count]))
    }
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        note("write \(offset)+\(buffer.count) fua=\(fua)")
        UnsafeMutableRawBufferPointer(rebasing: storage[Int(offset)..<Int(offset) + buffer.count]).copyMemory(from: buffer)
    }
    func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockError) {
        note("zero \(offset)+\(length) unmap=\(flags.contains(.mayUnmap))")
    }
    func discard(at offset: UInt64, length: UInt64) throws(BlockError) { note("discard \(offset)+\(length)") }
    func flush() throws(BlockError) { note("flush") }
    func blockStatus(at offset: UInt64, length: UInt64) throws(BlockError) -> [Extent] {
        note("status \(offset)+\(length)")
        return [.hole(length)]
    }
    func prefetch(at offset: UInt64, length: UInt64) throws(BlockError) { note("prefetch \(offset)+\(length)") }
    func resize(to length: UInt64) throws(BlockError) {
        note("resize \(length)")
        size.withLock { $0 = length }
    }
    func mappedBytes(at offset: UInt64, length: Int) -> UnsafeRawPointer? {
        UnsafeRawPointer(storage.baseAddress! + Int(offset))
    }
    func directTarget(at offset: UInt64, length: Int) -> DirectTarget? { DirectTarget(fd: 99, offset: offset) }
    func debugEvent(_ event: BlkdebugEvent) { note("event \(event)") }
    func close() { note("close") }
}

/// The smallest filter: it counts reads and implements nothing else.
private final class ReadCountingFilter: FilterDriver {
    let driverName = "read-counter"
    let child: BlockNode
    let reads = Atomic<Int>(0)

    init(child: BlockNode) { self.child = child }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        reads.add(1, ordering: .relaxed)
        try child.read(into: buffer, at: offset)
    }
}

/// A filter reached through `any BlockDriver` (as `BlockNode` reaches every driver) forwards what
/// it does not implement to its child, and never the paths that go around it.
final class FilterDriverTests: XCTestCase {
    private let leaf = LoggingLeaf()
    private lazy var leafNode = BlockNode(name: "leaf", driver: leaf, readOnly: false)
    private lazy var filter = ReadCountingFilter(child: leafNode)
    /// The filter as the core sees it: an existential, dispatched through the witness table.
    private var driver: any BlockDriver { filter }

    func testWhatTheFilterImplementsIsWhatRuns() throws {
        var buffer = [UInt8](repeating: 1, count: 512)
        try buffer.withUnsafeMutableBytes { try driver.read(into: $0, at: 4096) }
        XCTAssertEqual(filter.reads.load(ordering: .relaxed), 1)
        XCTAssertEqual(leaf.take(), ["read 4096+512"])
        XCTAssertEqual(buffer, [UInt8](repeating: 0, count: 512))
    }

    func testEveryOtherOperationReachesTheChild() throws {
        let payload = [UInt8](repeating: 7, count: 512)
        try payload.withUnsafeBytes { try driver.write($0, at: 512, fua: true) }
        try driver.writeZeroes(at: 1024, length: 4096, flags: .mayUnmap)
        try driver.discard(at: 8192, length: 4096)
        try driver.flush()
        XCTAssertEqual(try driver.blockStatus(at: 0, length: 65536), [.hole(65536)])
        try driver.prefetch(at: 0, length: 1024)
        try driver.resize(to: 1 << 17)
        XCTAssertEqual(leaf.take(), [
            "write 512+512 fua=true", "zero 1024+4096 unmap=true", "discard 8192+4096", "flush", "status 0+65536",
            "prefetch 0+1024", "resize 131072",
        ])
        XCTAssertEqual(filter.reads.load(ordering: .relaxed), 0, "writes do not go through the filter's read")
    }

    func testDescriptionIsTheChilds() {
        XCTAssertEqual(driver.length, leaf.length)
        XCTAssertEqual(driver.filename, "/images/leaf.img")
        XCTAssertEqual(driver.allocatedSize, 12_345)
        let features = driver.features
        XCTAssertTrue(features.discard && features.fastZero && features.blockStatus)
        XCTAssertEqual(features.fua, .native)
        XCTAssertEqual(features.maxTransfer, 1 << 16)
        XCTAssertFalse(features.writeThresholdOnFile, "the child's own behaviours are not inherited")
    }

    func testPathsAroundTheFilterAreClosed() {
        XCTAssertNotNil(leafNode.mappedBytes(at: 0, length: 512), "the child maps its bytes")
        XCTAssertNotNil(leafNode.directTarget(at: 0, length: 512))
        XCTAssertNil(driver.mappedBytes(at: 0, length: 512))
        var runs: [UnsafeRawBufferPointer] = []
        XCTAssertFalse(driver.mappedRuns(at: 0, length: 512, limit: 4, into: &runs))
        XCTAssertTrue(runs.isEmpty)
        XCTAssertNil(driver.directTarget(at: 0, length: 512))
        let node = BlockNode(name: "filter", driver: filter, children: [("file", leafNode)], readOnly: false)
        XCTAssertNil(node.mappedBytes(at: 0, length: 512))
        XCTAssertNil(node.directTarget(at: 0, length: 512))
        XCTAssertEqual(leaf.take(), [], "nothing reached the child")
    }

    func testCloseAndEventsStayWithTheFilter() {
        driver.debugEvent(.readAio)
        driver.close()
        XCTAssertEqual(leaf.take(), [], "the graph closes the child as a node of its own")
    }

    func testThroughANodeTheChildsEmulationApplies() throws {
        let node = BlockNode(name: "filter", driver: filter, children: [("file", leafNode)], readOnly: false)
        try node.writeZeroes(at: 0, length: 4096, flags: [.mayUnmap, .fua])
        try node.discard(at: 0, length: 4096)
        XCTAssertEqual(node.length, 1 << 16)
        XCTAssertEqual(try node.blockStatus(at: 0, length: 512), [.hole(512)])
        try node.resize(to: 1 << 15)
        XCTAssertEqual(node.length, 1 << 15)
        XCTAssertEqual(leaf.take(), ["zero 0+4096 unmap=true", "discard 0+4096", "status 0+512", "resize 32768"])
    }

    /// The block layer's filters over the same child: throttle and blkdebug forward what they do not
    /// change and keep every request on their own path; raw maps through its window.
    func testTheDriversFiltersForwardAndCannotBeBypassed() throws {
        let throttle = ThrottleDriver(child: leafNode, group: ThrottleGroup(name: "tg", limits: ThrottleLimits()))
        defer { throttle.close() }
        let filters: [any BlockDriver] = [throttle, BlkdebugDriver(child: leafNode, rules: BlkdebugRuleSet(), align: 0)]
        for driver in filters {
            XCTAssertNil(driver.mappedBytes(at: 0, length: 512), driver.driverName)
            var runs: [UnsafeRawBufferPointer] = []
            XCTAssertFalse(driver.mappedRuns(at: 0, length: 512, limit: 4, into: &runs), driver.driverName)
            XCTAssertNil(driver.directTarget(at: 0, length: 512), driver.driverName)
            try driver.discard(at: 0, length: 4096)
            XCTAssertEqual(try driver.blockStatus(at: 0, length: 512), [.hole(512)], driver.driverName)
            try driver.prefetch(at: 0, length: 512)
            try driver.resize(to: leaf.length)
            XCTAssertEqual(driver.filename, "/images/leaf.img")
            XCTAssertEqual(driver.allocatedSize, 12_345)
            XCTAssertEqual(leaf.take(), ["discard 0+4096", "status 0+512", "prefetch 0+512", "resize 65536"], driver.driverName)
        }
        let raw: any BlockDriver = RawDriver(child: leafNode, offset: 4096, size: nil)
        XCTAssertEqual(raw.mappedBytes(at: 512, length: 512), leafNode.mappedBytes(at: 4608, length: 512))
        XCTAssertEqual(raw.directTarget(at: 512, length: 512)?.offset, 4608)
        try raw.discard(at: 0, length: 4096)
        try raw.flush()
        XCTAssertEqual(raw.length, leaf.length - 4096)
        XCTAssertEqual(leaf.take(), ["discard 4096+4096", "flush"])
    }
}
