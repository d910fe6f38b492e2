/// The buckets of a throttle group: one per limit kind, leaked by elapsed monotonic time.
public struct ThrottleState: Sendable {
    /// The limits in force.
    public private(set) var limits: ThrottleLimits
    /// One bucket per `ThrottleLimits.Kind`.
    public private(set) var buckets: [LeakyBucket]
    /// When the buckets last leaked (monotonic nanoseconds).
    public private(set) var lastLeak: UInt64

    /// Empty buckets for `limits`, as of `now`.
    public init(limits: ThrottleLimits, now: UInt64) {
        self.limits = limits
        self.buckets = ThrottleLimits.Kind.allCases.map { LeakyBucket(limit: limits[$0]) }
        self.lastLeak = now
    }

    /// Replaces the limits; what the buckets hold is kept.
    public mutating func setLimits(_ new: ThrottleLimits, now: UInt64) {
        leak(now: now)
        limits = new
        for kind in ThrottleLimits.Kind.allCases { buckets[kind.rawValue].setLimit(new[kind]) }
    }

    /// Leaks the buckets up to `now`.
    public mutating func leak(now: UInt64) {
        guard now > lastLeak else { return }
        let elapsed = now - lastLeak
        lastLeak = now
        for index in buckets.indices { buckets[index].leak(nanoseconds: elapsed) }
    }

    /// Nanoseconds until a read or write may start (0: now); call `leak` first.
    public func wait(isWrite: Bool) -> UInt64 {
        var longest: UInt64 = 0
        for kind in ThrottleLimits.Kind.allCases where kind.applies(isWrite: isWrite) {
            longest = max(longest, buckets[kind.rawValue].wait)
        }
        return longest
    }

    /// Accounts a read or write of `bytes` that starts now.
    public mutating func account(isWrite: Bool, bytes: UInt64) {
        let requests = limits.iopsSize > 0 && bytes > limits.iopsSize ? Double(bytes) / Double(limits.iopsSize) : 1
        for kind in ThrottleLimits.Kind.allCases where kind.applies(isWrite: isWrite) {
            buckets[kind.rawValue].pour(kind.countsBytes ? Double(bytes) : requests)
        }
    }
}
