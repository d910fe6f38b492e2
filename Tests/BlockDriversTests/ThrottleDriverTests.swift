import BlockCore
import BlockDrivers
import BlockTestSupport
import Dispatch
import XCTest

/// The `throttle` filter: its requests wait for the group's limits, and waiting requests are
/// released when the limits change or the node leaves the group.
final class ThrottleDriverTests: XCTestCase {
    private var memory: MemoryDriver!
    private var group: ThrottleGroup!
    private var throttle: ThrottleDriver!

    /// A throttle node over a memory device, in a group allowing 1 byte per second of `kind`:
    /// after a first request, the next waits about as many seconds as it has bytes.
    private func makeThrottle(_ kind: ThrottleLimits.Kind) {
        memory = MemoryDriver(length: 1 << 20)
        var limits = ThrottleLimits()
        limits[kind] = ThrottleLimits.Limit(average: 1)
        group = ThrottleGroup(name: "tg", limits: limits)
        throttle = ThrottleDriver(child: BlockNode(name: "mem", driver: memory, readOnly: false), group: group)
    }

    /// Starts a 1000-byte write through the filter on another thread; the semaphore is signalled when it returned.
    private func startWrite() -> DispatchSemaphore {
        let done = DispatchSemaphore(value: 0)
        let throttle = self.throttle!
        DispatchQueue.global().async {
            try? [UInt8](repeating: 7, count: 1000).withUnsafeBytes { try throttle.write($0, at: 0, fua: false) }
            done.signal()
        }
        return done
    }

    func testAWriteOverTheLimitWaitsUntilTheLimitsAreLifted() throws {
        makeThrottle(.bpsWrite)
        try [UInt8](repeating: 1, count: 1000).withUnsafeBytes { try throttle.write($0, at: 0, fua: false) }
        XCTAssertEqual(memory.calls(.write), 1, "an empty bucket lets the first request go")
        let done = startWrite()
        XCTAssertEqual(done.wait(timeout: .now() + 0.5), .timedOut, "the second write waits (about 1000 s at 1 byte/s)")
        XCTAssertEqual(memory.calls(.write), 1, "and has not reached the child")
        group.setLimits(ThrottleLimits())
        XCTAssertEqual(done.wait(timeout: .now() + 10), .success, "lifting the limits releases it")
        XCTAssertEqual(memory.calls(.write), 2)
        XCTAssertEqual(memory.contents[0], 7)
    }

    func testLeavingTheGroupReleasesQueuedRequests() throws {
        makeThrottle(.bpsTotal)
        try [UInt8](repeating: 1, count: 1000).withUnsafeBytes { try throttle.write($0, at: 0, fua: false) }
        let done = startWrite()
        XCTAssertEqual(done.wait(timeout: .now() + 0.5), .timedOut)
        throttle.close()
        XCTAssertEqual(group.memberCount, 0)
        XCTAssertEqual(done.wait(timeout: .now() + 10), .success, "closing the node releases its waiting request")
    }

    func testAWriteLimitDoesNotHoldReadsAndZeroWritesCountAsWrites() throws {
        makeThrottle(.bpsWrite)
        try throttle.writeZeroes(at: 0, length: 1000, flags: [])
        let done = startWrite()
        XCTAssertEqual(done.wait(timeout: .now() + 0.5), .timedOut, "the zero-write used the write budget")
        var buffer = [UInt8](repeating: 0, count: 4096)
        for _ in 0..<3 { try buffer.withUnsafeMutableBytes { try throttle.read(into: $0, at: 0) } }
        XCTAssertEqual(memory.calls(.read), 3, "reads pass a write limit")
        group.setLimits(ThrottleLimits())
        XCTAssertEqual(done.wait(timeout: .now() + 10), .success)
    }
}
