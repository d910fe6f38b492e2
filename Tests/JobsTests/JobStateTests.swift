import BlockCore
import XCTest

@testable import Jobs

final class JobStateTests: XCTestCase {
    func testTransitionTableMatchesQEMU() {
        XCTAssertTrue(JobStatus.ready.allows(.standby))
        XCTAssertTrue(JobStatus.standby.allows(.ready))
        XCTAssertFalse(JobStatus.standby.allows(.running))
        XCTAssertTrue(JobStatus.pending.allows(.concluded))
        XCTAssertFalse(JobStatus.concluded.allows(.running))
        XCTAssertFalse(JobStatus.null.allows(.created))
    }

    func testVerbTable() {
        XCTAssertTrue(JobVerb.complete.allowed(in: .ready))
        XCTAssertFalse(JobVerb.complete.allowed(in: .running))
        XCTAssertFalse(JobVerb.dismiss.allowed(in: .pending))
        XCTAssertTrue(JobVerb.finalize.allowed(in: .pending))
        XCTAssertFalse(JobVerb.cancel.allowed(in: .concluded))
    }

    func testRateLimitSpreadsBytesOverTime() {
        var limit = RateLimit(bytesPerSecond: 256 << 10)
        let start: UInt64 = 10_000_000_000
        // The first 64 KiB are paid ahead by the burst credit of 100 ms: 250 ms - 100 ms.
        XCTAssertEqual(limit.account(64 << 10, now: start), 150_000_000)
        XCTAssertEqual(limit.account(64 << 10, now: start + 150_000_000), 250_000_000)
        // Unlimited never waits.
        var free = RateLimit()
        XCTAssertEqual(free.account(1 << 30, now: start), 0)
    }

    func testChunkBitmapTakesRunsAndCountsBytes() {
        let bitmap = ChunkBitmap(length: 10 * 65536 + 100, granularity: 65536)
        XCTAssertEqual(bitmap.chunks, 11)
        bitmap.set(65536, 3 * 65536)
        XCTAssertEqual(bitmap.count, 3)
        XCTAssertEqual(bitmap.takeRun(limit: 2), 1..<3)
        XCTAssertEqual(bitmap.takeRun(limit: 2), 3..<4)
        XCTAssertNil(bitmap.takeRun(limit: 2))
        bitmap.setAll()
        XCTAssertEqual(bitmap.bytes, 10 * 65536 + 100)
    }
}
