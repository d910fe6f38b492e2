/// The speed limit of a job's own I/O (`speed`, bytes per second): each request moves a clock
/// forward by the time its bytes take at that speed, and the job waits while that clock is ahead
/// of now. Idle time earns at most `burstNanoseconds` of credit. Pure: time is an argument.
public struct RateLimit: Sendable, Equatable {
    /// The limit, 0 for none.
    public var bytesPerSecond: UInt64
    /// The most credit idle time earns.
    public let burstNanoseconds: UInt64
    private var paidUntil: UInt64 = 0

    /// A limit of `bytesPerSecond` (0: unlimited).
    public init(bytesPerSecond: UInt64 = 0, burstNanoseconds: UInt64 = 100_000_000) {
        self.bytesPerSecond = bytesPerSecond
        self.burstNanoseconds = burstNanoseconds
    }

    /// Accounts `bytes` just done at time `now` (nanoseconds); returns how long to wait before the
    /// next request, 0 to go on.
    public mutating func account(_ bytes: UInt64, now: UInt64) -> UInt64 {
        guard bytesPerSecond > 0 else { return 0 }
        let earliest = now > burstNanoseconds ? now - burstNanoseconds : 0
        if paidUntil < earliest { paidUntil = earliest }
        let (product, overflow) = bytes.multipliedReportingOverflow(by: 1_000_000_000)
        paidUntil += overflow ? UInt64.max / 4 : product / bytesPerSecond
        return paidUntil > now ? paidUntil - now : 0
    }
}
