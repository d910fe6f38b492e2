import CBlockShims

/// Request latencies of one BlockBackend in power-of-two buckets per kind of request, counted with
/// one relaxed atomic addition per request and read when the metrics endpoint is scraped.
///
/// Bucket `i` counts latencies in (2^(9+i), 2^(10+i)] nanoseconds (bucket 0 everything up to
/// 1024 ns); the last bucket counts everything above `upperBounds.last`.
///
/// `@unchecked Sendable`: the words are only touched through the atomic C helpers.
public final class LatencyHistogram: @unchecked Sendable {
    /// Buckets with an upper bound, per kind; one more counts the rest.
    public static let boundedBuckets = 21
    /// The upper bound of each bounded bucket, in nanoseconds (1.024 µs to about 1.07 s).
    public static let upperBounds: [UInt64] = (0..<boundedBuckets).map { 1024 << UInt64($0) }
    private static let perKind = boundedBuckets + 1
    private let words: UnsafeMutablePointer<UInt64>

    /// Creates zeroed buckets.
    public init() {
        let count = IOKind.allCases.count * LatencyHistogram.perKind
        words = .allocate(capacity: count)
        words.initialize(repeating: 0, count: count)
    }

    deinit { words.deallocate() }

    /// Counts one request of `kind` that took `nanoseconds`.
    @inline(__always)
    public func record(_ kind: IOKind, nanoseconds: UInt64) {
        let scaled = (max(nanoseconds, 1) &- 1) >> 10
        let index = min(LatencyHistogram.boundedBuckets, UInt64.bitWidth - scaled.leadingZeroBitCount)
        blk_word_add(words + kind.rawValue * LatencyHistogram.perKind + index, 1)
    }

    /// The counts of each bucket of `kind` (not cumulative), the last one unbounded.
    public func counts(_ kind: IOKind) -> [UInt64] {
        (0..<LatencyHistogram.perKind).map { blk_word_load(words + kind.rawValue * LatencyHistogram.perKind + $0) }
    }
}
