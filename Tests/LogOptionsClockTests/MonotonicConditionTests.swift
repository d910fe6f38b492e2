import Foundation
import LogOptionsClock
import Synchronization
import XCTest

/// The one condition type: its lock excludes, a broadcast wakes a waiter, a timed wait ends at its deadline.
final class MonotonicConditionTests: XCTestCase {
    func testBroadcastWakesAWaiterThatChecksItsState() {
        let condition = MonotonicCondition()
        let ready = Atomic<Bool>(false)
        let woke = expectation(description: "waiter woke")
        Thread.detachNewThread {
            condition.withLock {
                while !ready.load(ordering: .relaxed) { condition.wait() }
            }
            woke.fulfill()
        }
        usleep(20_000)
        condition.lock()
        ready.store(true, ordering: .relaxed)
        condition.broadcast()
        condition.unlock()
        wait(for: [woke], timeout: 10)
    }

    /// A deadline on the monotonic clock: were the condition on the realtime clock, it would lie in 1970 and the wait would return at once.
    func testTimedWaitReturnsAtTheDeadline() {
        let condition = MonotonicCondition()
        let start = MonotonicClock.nanoseconds()
        condition.withLock { condition.wait(until: start + 30_000_000) }
        XCTAssertGreaterThanOrEqual(MonotonicClock.nanoseconds() - start, 30_000_000)
    }
}
