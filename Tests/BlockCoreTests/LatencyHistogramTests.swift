import BlockCore
import XCTest

final class LatencyHistogramTests: XCTestCase {
    func testBucketBoundsAreInclusive() {
        let histogram = LatencyHistogram()
        for nanoseconds: UInt64 in [0, 1, 1024, 1025, 2048, 2049, 1 << 30, (1 << 30) + 1, UInt64.max] {
            histogram.record(.read, nanoseconds: nanoseconds)
        }
        var expected = [UInt64](repeating: 0, count: LatencyHistogram.boundedBuckets + 1)
        expected[0] = 3  // 0, 1, 1024
        expected[1] = 2  // 1025, 2048
        expected[2] = 1  // 2049
        expected[LatencyHistogram.boundedBuckets - 1] = 1  // 2^30 is the last bound
        expected[LatencyHistogram.boundedBuckets] = 2  // above it
        XCTAssertEqual(histogram.counts(.read), expected)
        XCTAssertEqual(histogram.counts(.write), [UInt64](repeating: 0, count: LatencyHistogram.boundedBuckets + 1))
        XCTAssertEqual(LatencyHistogram.upperBounds.first, 1024)
        XCTAssertEqual(LatencyHistogram.upperBounds.last, 1 << 30)
    }

    func testStatsCountEveryFinishedRequestOnce() {
        let stats = BlockStats()
        for _ in 0..<5 {
            let started = stats.start(.write)
            XCTAssertEqual(stats.inFlight(.write), 1)
            stats.done(.write, started: started, bytes: 4096, offset: 0, failed: false)
        }
        XCTAssertEqual(stats.latency.counts(.write).reduce(0, +), 5)
        XCTAssertEqual(stats.inFlight(.write), 0)
    }
}
