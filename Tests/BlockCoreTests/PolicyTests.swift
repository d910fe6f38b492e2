#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import BlockDrivers
import Synchronization
import XCTest
import LogOptionsClock

/// An in-memory driver that records the blkdebug events raised on its node.
///
/// `@unchecked Sendable`: the storage and the write counters are raw state that the tests drive
/// from one thread at a time; the recorded events are in a `Mutex`.
final class RecordingDriver: BlockDriver, @unchecked Sendable {
    let driverName = "recording"
    let features: DriverFeatures
    private let storage: UnsafeMutableRawBufferPointer
    private let recorded = Mutex<[BlkdebugEvent]>([])
    private(set) var zeroWrites = 0
    private(set) var writes = 0

    init(size: Int, alignment: Int = 1, fastZero: Bool = true) {
        storage = .allocate(byteCount: size, alignment: 4096)
        storage.initializeMemory(as: UInt8.self, repeating: 0)
        var features = DriverFeatures()
        features.debugEvents = true
        features.alignment = alignment
        features.fastZero = fastZero
        self.features = features
    }

    deinit { storage.deallocate() }

    var length: UInt64 { UInt64(storage.count) }

    var events: [BlkdebugEvent] { recorded.withLock { $0 } }

    func clear() {
        recorded.withLock { $0.removeAll() }
    }

    func debugEvent(_ event: BlkdebugEvent) {
        recorded.withLock { $0.append(event) }
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: storage[Int(offset)..<Int(offset) + buffer.count]))
    }

    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        writes += 1
        UnsafeMutableRawBufferPointer(rebasing: storage[Int(offset)..<Int(offset) + buffer.count]).copyMemory(from: buffer)
    }

    func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockError) {
        zeroWrites += 1
        UnsafeMutableRawBufferPointer(rebasing: storage[Int(offset)..<Int(offset + length)]).initializeMemory(as: UInt8.self, repeating: 0)
    }

    func flush() throws(BlockError) {}

    func byte(at offset: Int) -> UInt8 { storage[offset] }
}

/// A format driver that measures a threshold set on it on its `file` child (as qcow2 does).
final class HostOffsetFormat: BlockDriver {
    let driverName = "host-offset-format"
    let features: DriverFeatures
    let child: BlockNode

    init(child: BlockNode) {
        self.child = child
        var features = child.features
        features.debugEvents = false
        features.writeThresholdOnFile = true
        self.features = features
    }

    var length: UInt64 { child.length / 2 }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        try child.read(into: buffer, at: offset + length)
    }
    /// Guest offset x lands at host offset length + x.
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        try child.write(buffer, at: offset + length, fua: fua)
    }
    func flush() throws(BlockError) { try child.flush() }
}

final class PolicyTests: XCTestCase {
    /// The events a sink delivers, as they arrive.
    final class EventLog: Sendable {
        private let events = Mutex<[BlockEvent]>([])
        init(_ sink: BlockEventSink) {
            sink.install { [self] event in events.withLock { $0.append(event) } }
        }
        var all: [BlockEvent] { events.withLock { $0 } }
    }

    private func collect(_ sink: BlockEventSink) -> EventLog { EventLog(sink) }

    // MARK: - Zero check

    func testZeroCheckFindsAnyNonZeroByte() {
        for size in [0, 1, 7, 8, 15, 16, 17, 255, 256, 257, 511, 4096, 65_536 + 13] {
            var bytes = [UInt8](repeating: 0, count: size + 3)
            for start in 0..<3 {
                bytes.withUnsafeBytes { all in
                    XCTAssertTrue(UnsafeRawBufferPointer(rebasing: all[start..<start + size]).isAllZero, "size \(size)")
                }
            }
            for position in Set([0, size / 3, size / 2, size - 9, size - 8, size - 1].filter { $0 >= 0 && $0 < size }) {
                bytes[position + 1] = 0x80
                bytes.withUnsafeBytes { all in
                    XCTAssertFalse(UnsafeRawBufferPointer(rebasing: all[1..<1 + size]).isAllZero, "size \(size), byte \(position)")
                }
                bytes[position + 1] = 0
            }
        }
    }

    // MARK: - Write threshold

    func testThresholdFiresOnceForTheFirstCrossingWrite() throws {
        let sink = BlockEventSink()
        let seen = collect(sink)
        let node = BlockNode(name: "n0", driver: RecordingDriver(size: 1 << 20), readOnly: false, events: sink)
        node.setWriteThreshold(65_536)
        XCTAssertEqual(node.writeThreshold, 65_536)
        let block = [UInt8](repeating: 1, count: 4096)
        try block.withUnsafeBytes { try node.write($0, at: 61_440, fua: false) }  // ends exactly at the threshold
        XCTAssertEqual(seen.all, [])
        try block.withUnsafeBytes { try node.write($0, at: 63_488, fua: false) }
        XCTAssertEqual(seen.all, [.writeThreshold(nodeName: "n0", amountExceeded: 2048, threshold: 65_536)])
        XCTAssertEqual(node.writeThreshold, 0, "the threshold clears itself")
        try block.withUnsafeBytes { try node.write($0, at: 500_000, fua: false) }
        XCTAssertEqual(seen.all.count, 1)
        // Zero-writes count too; 0 disarms.
        node.setWriteThreshold(100_000)
        try node.writeZeroes(at: 200_000, length: 1000, flags: [])
        XCTAssertEqual(seen.all.last, .writeThreshold(nodeName: "n0", amountExceeded: 101_000, threshold: 100_000))
        node.setWriteThreshold(4096)
        node.setWriteThreshold(0)
        try block.withUnsafeBytes { try node.write($0, at: 8192, fua: false) }
        XCTAssertEqual(seen.all.count, 2)
    }

    func testConcurrentCrossingWritesReportOnce() throws {
        let sink = BlockEventSink()
        let seen = collect(sink)
        let node = BlockNode(name: "n0", driver: RecordingDriver(size: 1 << 20), readOnly: false, events: sink)
        for round in 1...20 {
            node.setWriteThreshold(4096)
            DispatchQueue.concurrentPerform(iterations: 8) { index in
                let block = [UInt8](repeating: 1, count: 512)
                try? block.withUnsafeBytes { try node.write($0, at: UInt64(8192 + index * 512), fua: false) }
            }
            XCTAssertEqual(seen.all.count, round)
        }
    }

    func testThresholdOfAFormatIsMeasuredOnItsFile() throws {
        let sink = BlockEventSink()
        let seen = collect(sink)
        let file = BlockNode(name: "proto", driver: RecordingDriver(size: 1 << 20), readOnly: false, events: sink)
        let format = BlockNode(name: "fmt", driver: HostOffsetFormat(child: file), children: [("file", file)], readOnly: false, events: sink)
        format.setWriteThreshold(600_000)
        XCTAssertEqual(format.writeThreshold, 600_000)
        XCTAssertEqual(file.writeThreshold, 600_000)
        let block = [UInt8](repeating: 1, count: 4096)
        // Guest offset 90000 is host offset 614288: past the threshold although the guest offset is not.
        try block.withUnsafeBytes { try format.write($0, at: 90_000, fua: false) }
        XCTAssertEqual(seen.all, [.writeThreshold(nodeName: "fmt", amountExceeded: 18_384, threshold: 600_000)])
        XCTAssertEqual(format.writeThreshold, 0)
    }

    // MARK: - detect-zeroes

    func testDetectZeroesTurnsZeroPayloadsIntoZeroWrites() throws {
        let driver = RecordingDriver(size: 1 << 20)
        var common = CommonNodeOptions()
        common.discardUnmap = true
        let node = BlockNode(name: "n0", driver: driver, readOnly: false, common: common)
        let zeroes = [UInt8](repeating: 0, count: 65_536)
        try zeroes.withUnsafeBytes { try node.write($0, at: 0, fua: false) }
        XCTAssertEqual([driver.writes, driver.zeroWrites], [1, 0], "off: written as it came")
        try node.setDetectZeroes(.unmap)
        XCTAssertEqual(node.detectZeroes, .unmap)
        try zeroes.withUnsafeBytes { try node.write($0, at: 0, fua: false) }
        XCTAssertEqual([driver.writes, driver.zeroWrites], [1, 1])
        var data = zeroes
        data[65_535] = 1
        try data.withUnsafeBytes { try node.write($0, at: 0, fua: false) }
        XCTAssertEqual([driver.writes, driver.zeroWrites], [2, 1], "a payload that is not all zero is written")
        XCTAssertEqual(driver.byte(at: 65_535), 1)
        try node.setDetectZeroes(.off)
        try zeroes.withUnsafeBytes { try node.write($0, at: 0, fua: false) }
        XCTAssertEqual([driver.writes, driver.zeroWrites], [3, 1])
        XCTAssertEqual(node.highestWriteOffset, 65_536)
    }

    func testDetectZeroesUnmapNeedsDiscardUnmap() throws {
        let node = BlockNode(name: "n0", driver: RecordingDriver(size: 4096), readOnly: false)
        XCTAssertThrowsError(try node.setDetectZeroes(.unmap)) {
            XCTAssertEqual(($0 as? BlockError)?.message,
                           "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap")
        }
        XCTAssertEqual(node.detectZeroes, .off, "a refused change changes nothing")
        try node.setDetectZeroes(.on)
        XCTAssertEqual(node.detectZeroes, .on)
        let graph = BlockGraph(drivers: Drivers.all)
        XCTAssertThrowsError(try graph.open(try KeyValueParser.parse("driver=null-co,node-name=z,detect-zeroes=unmap")))
        let opened = try graph.open(try KeyValueParser.parse("driver=null-co,node-name=z,detect-zeroes=unmap,discard=unmap"))
        XCTAssertEqual(opened.detectZeroes, .unmap)
    }

    func testDetectZeroesUnmapPunchesHolesInAFile() throws {
        let path = NSTemporaryDirectory() + "blockd-dz-\(UUID().uuidString).img"
        defer { unlink(path) }
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: nil))
        XCTAssertEqual(truncate(path, 8 << 20), 0)
        let graph = BlockGraph(drivers: Drivers.all)
        defer { graph.closeAll() }
        let node = try graph.open(try KeyValueParser.parse(
            "driver=raw,node-name=r,discard=unmap,detect-zeroes=unmap,file.driver=file,file.filename=\(path),file.discard=unmap"))
        let ones = [UInt8](repeating: 1, count: 8 << 20)
        try ones.withUnsafeBytes { try node.write($0, at: 0, fua: false) }
        try node.flush()
        XCTAssertGreaterThan(allocatedBytes(path), 0)
        let zeroes = [UInt8](repeating: 0, count: 8 << 20)
        try zeroes.withUnsafeBytes { try node.write($0, at: 0, fua: false) }
        try node.flush()
        XCTAssertEqual(allocatedBytes(path), 0)
    }

    private func allocatedBytes(_ path: String) -> Int {
        var info = stat()
        XCTAssertEqual(stat(path, &info), 0)
        return Int(info.st_blocks) * 512
    }

    // MARK: - Events of the generic path

    func testGenericPathRaisesWriteAndFlushEvents() throws {
        let child = RecordingDriver(size: 1 << 20)
        let file = BlockNode(name: "rec", driver: child, readOnly: false)
        let raw = BlockNode(name: "raw", driver: RawDriver(child: file, offset: 0, size: nil), children: [("file", file)], readOnly: false)
        var buffer = [UInt8](repeating: 0, count: 4096)
        try buffer.withUnsafeMutableBytes { try raw.read(into: $0, at: 0) }
        XCTAssertEqual(child.events, [.readAio])
        child.clear()
        try buffer.withUnsafeBytes { try raw.write($0, at: 0, fua: false) }
        XCTAssertEqual(child.events, [.writeAio, .pwritev, .pwritevDone])
        child.clear()
        try raw.writeZeroes(at: 0, length: 4096, flags: [])
        XCTAssertEqual(child.events, [.pwritevZero, .pwritevDone])
        child.clear()
        try raw.flush()
        XCTAssertEqual(Array(child.events.prefix(2)), [.flushToOs, .flushToDisk])
    }

    func testReadModifyWriteRaisesItsEvents() throws {
        let driver = RecordingDriver(size: 1 << 16, alignment: 512)
        let node = BlockNode(name: "rec", driver: driver, readOnly: false)
        let payload = [UInt8](repeating: 7, count: 1000)
        try payload.withUnsafeBytes { try node.write($0, at: 100, fua: false) }
        XCTAssertEqual(driver.events, [.pwritevRmwHead, .pwritevRmwAfterHead, .pwritevRmwTail, .pwritevRmwAfterTail,
                                       .pwritev, .pwritevDone])
        XCTAssertEqual([driver.byte(at: 99), driver.byte(at: 100), driver.byte(at: 1099), driver.byte(at: 1100)], [0, 7, 7, 0])
        driver.clear()
        // Head and tail in one block: read once.
        try payload.withUnsafeBytes { try node.write(UnsafeRawBufferPointer(rebasing: $0[0..<10]), at: 2050, fua: false) }
        XCTAssertEqual(driver.events, [.pwritevRmwHead, .pwritevRmwAfterHead, .pwritev, .pwritevDone])
        XCTAssertEqual([driver.byte(at: 2049), driver.byte(at: 2050), driver.byte(at: 2059), driver.byte(at: 2060)], [0, 7, 7, 0])
    }

    func testNodesWithoutPoliciesStayOnThePlainPath() throws {
        let graph = BlockGraph(drivers: Drivers.all)
        let node = try graph.open(try KeyValueParser.parse("driver=null-co,node-name=n,size=1M"))
        XCTAssertEqual(node.detectZeroes, .off)
        XCTAssertEqual(node.writeThreshold, 0)
        // A raw node over a blkdebug node does not take events itself.
        try graph.open(try KeyValueParser.parse("driver=blkdebug,node-name=d,image=n"))
        let raw = try graph.open(try KeyValueParser.parse("driver=raw,node-name=r,file=d"))
        XCTAssertFalse(raw.features.debugEvents)
        XCTAssertTrue(graph.node(named: "d")!.features.debugEvents)
    }

    func testZeroBlockIsZeroEvenOnRecycledHeapMemory() {
        // Dirty and free large heap blocks first, as a qcow2 copy-on-write does, then look.
        for _ in 0..<4 {
            let dirty = [UInt8](repeating: 0x55, count: 2 << 20)
            XCTAssertEqual(dirty.last, 0x55)
        }
        XCTAssertTrue(ZeroBlock.bytes.isAllZero)
        XCTAssertEqual(ZeroBlock.bytes.count, ZeroBlock.size)
    }
}
