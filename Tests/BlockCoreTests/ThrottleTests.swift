#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import Foundation
import Synchronization
import XCTest

/// The leaky-bucket arithmetic with time passed in (no sleeping), the limit checks, and a device's
/// admission and pausing.
final class ThrottleTests: XCTestCase {
    private let second: UInt64 = 1_000_000_000

    private func limits(_ kind: ThrottleLimits.Kind, _ average: UInt64, burst: UInt64 = 0, seconds: UInt64 = 1) -> ThrottleLimits {
        var limits = ThrottleLimits()
        limits[kind] = ThrottleLimits.Limit(average: average, burst: burst, burstSeconds: seconds)
        return limits
    }

    /// Sends requests of `size` as fast as the state allows for `duration`; returns the bytes started.
    private func drive(_ state: inout ThrottleState, size: UInt64, from start: UInt64, for duration: UInt64) -> UInt64 {
        var now = start
        var bytes: UInt64 = 0
        while now < start + duration {
            state.leak(now: now)
            let wait = state.wait(isWrite: false)
            if wait > 0 {
                now += wait
                continue
            }
            state.account(isWrite: false, bytes: size)
            bytes += size
        }
        return bytes
    }

    func testBucketWithoutBurstAllowsATenthOfASecond() {
        var bucket = LeakyBucket(limit: .init(average: 1000))
        XCTAssertEqual(bucket.capacity, 100)
        bucket.pour(100)
        XCTAssertEqual(bucket.wait, 0, "at capacity, not over it")
        bucket.pour(50)
        XCTAssertEqual(bucket.wait, 50_000_000, "50 units over at 1000/s")
        bucket.leak(nanoseconds: 50_000_000)
        XCTAssertEqual(bucket.level, 100, accuracy: 1e-9)
        XCTAssertEqual(bucket.wait, 0)
        bucket.leak(nanoseconds: 10 * second)
        XCTAssertEqual(bucket.level, 0, "never below empty")
    }

    func testBurstBucketCapacityLastsBurstSeconds() {
        // Filled at 5000/s while leaking at 1000/s, 4000 × 3 units take 3 s.
        let bucket = LeakyBucket(limit: .init(average: 1000, burst: 5000, burstSeconds: 3))
        XCTAssertEqual(bucket.capacity, 12_000)
        XCTAssertEqual(bucket.burstCapacity, 500)
    }

    func testAverageRateOverTenSeconds() {
        var state = ThrottleState(limits: limits(.bpsTotal, 1 << 20), now: 0)
        let bytes = drive(&state, size: 64 << 10, from: 0, for: 10 * second)
        // The average plus the bucket's tenth of a second (and one request).
        XCTAssertEqual(Double(bytes), 10.1 * Double(1 << 20), accuracy: Double(64 << 10))
    }

    func testBurstAtMaxForMaxLengthThenAverage() {
        let average: UInt64 = 1 << 20, burst: UInt64 = 8 << 20
        var state = ThrottleState(limits: limits(.bpsTotal, average, burst: burst, seconds: 2), now: 0)
        let first = drive(&state, size: 64 << 10, from: 0, for: 2 * second)
        XCTAssertEqual(Double(first) / 2, Double(burst), accuracy: 0.1 * Double(burst), "the burst rate for 2 s")
        let later = drive(&state, size: 64 << 10, from: 2 * second + 1, for: 4 * second)
        XCTAssertEqual(Double(later) / 4, Double(average), accuracy: 0.1 * Double(average), "then the average")
    }

    func testIopsSizeCountsLargeRequestsAsSeveral() {
        var limits = limits(.iopsTotal, 100)
        limits.iopsSize = 4096
        var state = ThrottleState(limits: limits, now: 0)
        state.account(isWrite: false, bytes: 16384)
        XCTAssertEqual(state.buckets[ThrottleLimits.Kind.iopsTotal.rawValue].level, 4)
        state.account(isWrite: false, bytes: 512)
        XCTAssertEqual(state.buckets[ThrottleLimits.Kind.iopsTotal.rawValue].level, 5)
    }

    func testDirectionalLimitsOnlyApplyToTheirDirection() {
        var state = ThrottleState(limits: limits(.bpsWrite, 1000), now: 0)
        state.account(isWrite: true, bytes: 10_000)
        XCTAssertGreaterThan(state.wait(isWrite: true), 0)
        XCTAssertEqual(state.wait(isWrite: false), 0)
    }

    func testChangingLimitsKeepsTheLevelWithinTheNewCapacity() {
        var state = ThrottleState(limits: limits(.bpsTotal, 1000), now: 0)
        state.account(isWrite: false, bytes: 100_000)
        XCTAssertGreaterThan(state.wait(isWrite: false), 90 * second)
        state.setLimits(limits(.bpsTotal, 1_000_000), now: 0)
        XCTAssertEqual(state.wait(isWrite: false), 0, "a raised limit lets a waiting request go at once")
        state.setLimits(ThrottleLimits(), now: 0)
        XCTAssertEqual(state.wait(isWrite: false), 0)
    }

    func testLimitChecks() {
        XCTAssertNil(limits(.bpsTotal, 10, burst: 20, seconds: 5).problem)
        var both = limits(.bpsTotal, 10)
        both[.bpsRead] = .init(average: 5)
        XCTAssertEqual(both.problem, "bps/iops/max total values and read/write values cannot be used at the same time")
        XCTAssertEqual(limits(.iopsRead, 10, burst: 5).problem, "bps_max/iops_max cannot be lower than bps/iops values")
        XCTAssertEqual(limits(.iopsRead, 0, burst: 5).problem, "bps_max/iops_max require corresponding bps/iops values")
        XCTAssertEqual(limits(.bpsWrite, 10, seconds: 3).problem,
                       "bps_max_length/iops_max_length require corresponding bps_max/iops_max values")
        XCTAssertNotNil(limits(.bpsTotal, ThrottleLimits.maximumValue + 1).problem)
        XCTAssertFalse(ThrottleLimits().isEnabled)
    }

    func testGroupAdmitsMembersOnlyAndLeavingReleasesWaiters() {
        // 1 byte/s: after 1000 bytes the next request would wait about 1000 s, far past any timeout
        // here, so only `leave` waking it can end the wait.
        let group = ThrottleGroup(name: "g", limits: limits(.bpsTotal, 1))
        let member = Member(), stranger = Member()
        group.join(member)
        XCTAssertFalse(group.admit(stranger, isWrite: false, bytes: 1) {})
        XCTAssertTrue(group.admit(member, isWrite: false, bytes: 1000) {}, "an empty bucket lets a request go")
        let sleeping = expectation(description: "about to sleep")
        let released = expectation(description: "released")
        let admittedAfterLeaving = LockedFlag()
        Thread {
            admittedAfterLeaving.set(group.admit(member, isWrite: false, bytes: 1) { sleeping.fulfill() })
            released.fulfill()
        }.start()
        wait(for: [sleeping], timeout: 10)
        // `beforeSleeping` runs just before the request sleeps; give it time to fall asleep, so that
        // `leave` has to wake it (a leave before the sleep is seen without a wake-up).
        Thread.sleep(forTimeInterval: 0.2)
        XCTAssertEqual(group.leave(member), 0)
        wait(for: [released], timeout: 10)
        XCTAssertEqual(admittedAfterLeaving.value, false, "a request of a member that left is not accounted")
    }

    func testDevicePauseBlocksAdmissionUntilResumed() {
        let device = BlockBackend(id: "d", medium: nil)
        XCTAssertFalse(device.needsAdmission)
        let before = device.generation
        XCTAssertTrue(device.pause(.stopped))
        XCTAssertTrue(device.needsAdmission)
        XCTAssertNotEqual(device.generation, before, "requests notice the pause through the generation")
        let waiting = expectation(description: "the request waits")
        let admitted = expectation(description: "admitted")
        let done = LockedFlag()
        Thread {
            device.admit(isWrite: false, bytes: 1) { waiting.fulfill() }
            done.set(true)
            admitted.fulfill()
        }.start()
        // `beforeWaiting` runs only when the request has to wait: a pause that does not block fails here.
        wait(for: [waiting], timeout: 10)
        XCTAssertFalse(device.pause(.ioError), "already paused")
        XCTAssertFalse(device.resume(.stopped), "still paused for the error")
        XCTAssertNil(done.value, "admitted while the device was still paused")
        XCTAssertTrue(device.resume(.ioError))
        wait(for: [admitted], timeout: 10)
        XCTAssertFalse(device.needsAdmission)
    }

    func testErrorPolicies() {
        let device = BlockBackend(id: "d", medium: nil)
        XCTAssertEqual(device.handleError(errno: EIO, message: "x", isWrite: true), .report)
        device.writeErrorPolicy = .enospc
        device.readErrorPolicy = .ignore
        XCTAssertEqual(device.handleError(errno: EIO, message: "x", isWrite: true), .report)
        XCTAssertEqual(device.handleError(errno: EIO, message: "x", isWrite: false), .ignore)
        XCTAssertEqual(device.ioStatus, .ok)
        XCTAssertEqual(device.handleError(errno: ENOSPC, message: "full", isWrite: true), .stop)
        XCTAssertEqual(device.ioStatus, .noSpace)
        XCTAssertEqual(device.pauseReasons, .ioError)
        XCTAssertEqual(device.readErrorPolicy, .ignore)
        XCTAssertEqual(device.writeErrorPolicy, .enospc)
        device.resetIOStatus()
        device.resume(.ioError)
        XCTAssertEqual(device.ioStatus, .ok)
        XCTAssertFalse(device.needsAdmission)
    }
}

/// A throttle group member for the tests.
private final class Member: Sendable {}

/// A Bool set on one thread and read on another.
private final class LockedFlag: Sendable {
    private let stored = Mutex<Bool?>(nil)

    func set(_ value: Bool) { stored.withLock { $0 = value } }

    var value: Bool? { stored.withLock { $0 } }
}
