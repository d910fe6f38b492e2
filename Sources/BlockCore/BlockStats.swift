import Synchronization
import LogOptionsClock

/// The kinds of request accounted (BlockAcctType).
public enum IOKind: Int, Sendable, CaseIterable {
    case read = 0
    case write = 1
    case flush = 2
    case unmap = 3
}

/// I/O accounting of one BlockBackend, as BlockDeviceStats reports it: counted on every request
/// with relaxed atomics, so that accounting costs two clock reads and a few additions.
public final class BlockStats: Sendable {
    /// The counters of one kind of request.
    private final class Counters: Sendable {
        let bytes = Atomic<UInt64>(0)
        let operations = Atomic<UInt64>(0)
        let totalNanoseconds = Atomic<UInt64>(0)
        let failed = Atomic<UInt64>(0)
        let invalid = Atomic<UInt64>(0)
        let inFlight = Atomic<Int>(0)
    }
    private let counters = IOKind.allCases.map { _ in Counters() }
    private let highestWriteOffset = Atomic<UInt64>(0)
    private let lastActivity = Atomic<UInt64>(0)
    /// `stats-account-invalid`: count invalid requests in the latency figures too.
    public let accountInvalid = Atomic<Bool>(true)
    /// `stats-account-failed`: count failed requests in the latency figures too.
    public let accountFailed = Atomic<Bool>(true)
    private let timed = Mutex<[TimedStats]>([])
    /// Latency buckets per kind of request (the metrics endpoint's histograms).
    public let latency = LatencyHistogram()

    /// Creates zeroed accounting with the given `stats-intervals` (seconds).
    public init(intervals: [UInt32] = []) {
        setIntervals(intervals)
    }

    /// Marks a request as started; returns its start time for `done`.
    @inline(__always)
    public func start(_ kind: IOKind) -> UInt64 {
        counters[kind.rawValue].inFlight.add(1, ordering: .relaxed)
        return MonotonicClock.nanoseconds()
    }

    /// Accounts a finished request.
    @inline(__always)
    public func done(_ kind: IOKind, started: UInt64, bytes count: UInt64, offset: UInt64, failed didFail: Bool) {
        let end = MonotonicClock.nanoseconds()
        let latency = end &- started
        let counter = counters[kind.rawValue]
        counter.inFlight.subtract(1, ordering: .relaxed)
        lastActivity.store(end, ordering: .relaxed)
        if didFail {
            counter.failed.add(1, ordering: .relaxed)
            guard accountFailed.load(ordering: .relaxed) else { return }
        } else {
            counter.operations.add(1, ordering: .relaxed)
            counter.bytes.add(count, ordering: .relaxed)
            if kind == .write { highestWriteOffset.max(offset + count, ordering: .relaxed) }
        }
        counter.totalNanoseconds.add(latency, ordering: .relaxed)
        self.latency.record(kind, nanoseconds: latency)
        if hasTimedStats.load(ordering: .relaxed) {
            let depth = UInt64(max(0, counter.inFlight.load(ordering: .relaxed) + 1))
            timed.withLock { list in for index in list.indices { list[index].record(kind, latency: latency, depth: depth, at: end) } }
        }
    }

    private let hasTimedStats = Atomic<Bool>(false)

    /// Replaces the timed-statistics intervals.
    public func setIntervals(_ intervals: [UInt32]) {
        timed.withLock { list in list = intervals.map { TimedStats(interval: $0) } }
        hasTimedStats.store(!intervals.isEmpty, ordering: .relaxed)
    }

    /// Accounts a request refused at the edge (bad range, bad flags).
    public func invalidRequest(_ kind: IOKind) {
        counters[kind.rawValue].invalid.add(1, ordering: .relaxed)
        if accountInvalid.load(ordering: .relaxed) { lastActivity.store(MonotonicClock.nanoseconds(), ordering: .relaxed) }
    }

    /// Requests of `kind` started and not finished.
    public func inFlight(_ kind: IOKind) -> Int { max(0, counters[kind.rawValue].inFlight.load(ordering: .relaxed)) }

    /// A consistent-enough copy of every counter.
    public func snapshot() -> BlockStatsSnapshot {
        func read(_ field: (Counters) -> UInt64) -> [UInt64] { counters.map(field) }
        let last = lastActivity.load(ordering: .relaxed)
        let now = MonotonicClock.nanoseconds()
        return BlockStatsSnapshot(
            bytes: read { $0.bytes.load(ordering: .relaxed) }, operations: read { $0.operations.load(ordering: .relaxed) },
            totalNanoseconds: read { $0.totalNanoseconds.load(ordering: .relaxed) },
            failed: read { $0.failed.load(ordering: .relaxed) }, invalid: read { $0.invalid.load(ordering: .relaxed) },
            highestWriteOffset: highestWriteOffset.load(ordering: .relaxed),
            idleNanoseconds: last == 0 ? nil : now - last,
            accountInvalid: accountInvalid.load(ordering: .relaxed), accountFailed: accountFailed.load(ordering: .relaxed),
            timed: timed.withLock { list in list.map { $0.report(at: now) } })
    }
}

/// Counters of a `BlockStats` at one moment, indexed by `IOKind.rawValue`.
public struct BlockStatsSnapshot: Sendable {
    public var bytes: [UInt64]
    public var operations: [UInt64]
    public var totalNanoseconds: [UInt64]
    public var failed: [UInt64]
    public var invalid: [UInt64]
    public var highestWriteOffset: UInt64
    /// Nanoseconds since the last request; nil before the first.
    public var idleNanoseconds: UInt64?
    public var accountInvalid: Bool
    public var accountFailed: Bool
    public var timed: [TimedStatsReport]
}

/// Latency and queue-depth figures over one interval (BlockDeviceTimedStats).
public struct TimedStatsReport: Sendable {
    public var interval: UInt32
    /// min, max, average latency in ns, by `IOKind.rawValue` (read, write, flush).
    public var minimum: [UInt64]
    public var maximum: [UInt64]
    public var average: [UInt64]
    /// Average queue depth of reads and writes.
    public var readQueueDepth: Double
    public var writeQueueDepth: Double
}

/// Accumulates one interval: the figures of the last complete window are reported (the current one
/// while none has completed yet), as QEMU's timed averages do.
struct TimedStats: Sendable {
    let interval: UInt32
    private var windowStart: UInt64 = 0
    private var current = Window()
    private var previous: Window?

    struct Window: Sendable {
        var count = [UInt64](repeating: 0, count: 3)
        var sum = [UInt64](repeating: 0, count: 3)
        var minimum = [UInt64](repeating: 0, count: 3)
        var maximum = [UInt64](repeating: 0, count: 3)
        var depthSum = [UInt64](repeating: 0, count: 3)
    }

    init(interval: UInt32) {
        self.interval = interval
        self.windowStart = MonotonicClock.nanoseconds()
    }

    private mutating func roll(_ now: UInt64) {
        let length = UInt64(interval) * 1_000_000_000
        guard length > 0, now &- windowStart >= length else { return }
        previous = now &- windowStart >= 2 * length ? Window() : current
        current = Window()
        windowStart = now - (now &- windowStart) % length
    }

    mutating func record(_ kind: IOKind, latency: UInt64, depth: UInt64, at now: UInt64) {
        roll(now)
        let index = kind.rawValue
        guard index < 3 else { return }
        current.minimum[index] = current.count[index] == 0 ? latency : min(current.minimum[index], latency)
        current.maximum[index] = max(current.maximum[index], latency)
        current.count[index] += 1
        current.sum[index] += latency
        current.depthSum[index] += depth
    }

    func report(at now: UInt64) -> TimedStatsReport {
        var copy = self
        copy.roll(now)
        let window = copy.previous ?? copy.current
        let average = (0..<3).map { window.count[$0] == 0 ? 0 : window.sum[$0] / window.count[$0] }
        func depth(_ index: Int) -> Double {
            window.count[index] == 0 ? 0 : Double(window.depthSum[index]) / Double(window.count[index])
        }
        return TimedStatsReport(
            interval: interval, minimum: window.minimum, maximum: window.maximum, average: average,
            readQueueDepth: depth(0), writeQueueDepth: depth(1))
    }
}
