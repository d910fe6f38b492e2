/// One leaky bucket of a throttle (time is passed in, so it is tested without sleeping).
///
/// Requests pour their units (bytes or requests) in; the bucket leaks at the average rate. A request
/// may start while the bucket is not over its capacity, which is the average's tenth of a second
/// without a burst rate, or `(burst - average) × burstSeconds` with one: filled at the burst rate and
/// leaking at the average, it then takes exactly `burstSeconds` to fill, so a client may go at the
/// burst rate for that long before it is held to the average. A second, small bucket (a tenth of a
/// second at the burst rate, leaking at the burst rate) keeps the burst itself from going faster.
public struct LeakyBucket: Sendable, Equatable {
    /// The limit the bucket enforces.
    public var limit: ThrottleLimits.Limit
    /// Units in the bucket.
    public private(set) var level: Double = 0
    /// Units in the burst bucket.
    public private(set) var burstLevel: Double = 0

    /// An empty bucket for `limit`.
    public init(limit: ThrottleLimits.Limit) { self.limit = limit }

    /// Units the bucket holds before requests must wait.
    public var capacity: Double {
        let average = Double(limit.average)
        guard limit.burst > 0 else { return average / 10 }
        return max(average / 10, (Double(limit.burst) - average) * Double(limit.burstSeconds))
    }

    /// Units the burst bucket holds (0: no burst bucket).
    public var burstCapacity: Double { limit.burst > 0 ? Double(limit.burst) / 10 : 0 }

    /// Lets `nanoseconds` worth of units leak out.
    public mutating func leak(nanoseconds: UInt64) {
        guard limit.average > 0 else { return }
        let seconds = Double(nanoseconds) / 1e9
        level = max(0, level - Double(limit.average) * seconds)
        if limit.burst > 0 { burstLevel = max(0, burstLevel - Double(limit.burst) * seconds) }
    }

    /// Nanoseconds until a request may start (0: now).
    public var wait: UInt64 {
        guard limit.average > 0 else { return 0 }
        let extra = level - capacity
        if extra > 0 { return LeakyBucket.nanoseconds(extra / Double(limit.average)) }
        let burstExtra = burstLevel - burstCapacity
        if limit.burst > 0 && burstExtra > 0 { return LeakyBucket.nanoseconds(burstExtra / Double(limit.burst)) }
        return 0
    }

    /// Pours a started request's units in.
    public mutating func pour(_ units: Double) {
        guard limit.average > 0 else { return }
        level += units
        if limit.burst > 0 { burstLevel += units }
    }

    /// Changes the limit, keeping what is in the bucket (capped to the new capacity).
    public mutating func setLimit(_ new: ThrottleLimits.Limit) {
        limit = new
        if new.average == 0 {
            level = 0
            burstLevel = 0
        } else {
            level = min(level, capacity)
            burstLevel = min(burstLevel, burstCapacity)
        }
    }

    /// Seconds as whole nanoseconds, at least 1.
    static func nanoseconds(_ seconds: Double) -> UInt64 {
        max(1, UInt64(min(seconds, 3600) * 1e9))
    }
}
