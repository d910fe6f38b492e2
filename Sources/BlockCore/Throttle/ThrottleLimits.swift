/// The I/O limits of a throttle group (QEMU's `ThrottleLimits`, and the arguments of
/// `block_set_io_throttle`): an average rate, a burst rate and a burst length for bytes and requests,
/// in total or per direction. 0 means no limit.
public struct ThrottleLimits: Sendable, Equatable {
    /// What a limit counts.
    public enum Kind: Int, CaseIterable, Sendable {
        /// Bytes per second, reads and writes together (`bps`, `bps-total`).
        case bpsTotal
        /// Bytes read per second (`bps_rd`, `bps-read`).
        case bpsRead
        /// Bytes written per second (`bps_wr`, `bps-write`).
        case bpsWrite
        /// Requests per second, reads and writes together (`iops`, `iops-total`).
        case iopsTotal
        /// Read requests per second (`iops_rd`, `iops-read`).
        case iopsRead
        /// Write requests per second (`iops_wr`, `iops-write`).
        case iopsWrite

        /// Whether the limit counts bytes (or requests).
        public var countsBytes: Bool { rawValue < 3 }

        /// Whether the limit applies to reads (`isWrite` false) or writes.
        public func applies(isWrite: Bool) -> Bool {
            switch self {
            case .bpsTotal, .iopsTotal: return true
            case .bpsRead, .iopsRead: return !isWrite
            case .bpsWrite, .iopsWrite: return isWrite
            }
        }
    }

    /// One limit: an average rate, and a higher rate allowed for a burst of `burstSeconds`.
    public struct Limit: Sendable, Equatable {
        /// Units per second on average; 0: no limit.
        public var average: UInt64 = 0
        /// Units per second during a burst; 0: no bursts beyond the average's small slack.
        public var burst: UInt64 = 0
        /// How long a burst at `burst` may last, in seconds (at least 1).
        public var burstSeconds: UInt64 = 1

        /// A limit of `average` units per second, `burst` during `burstSeconds`.
        public init(average: UInt64 = 0, burst: UInt64 = 0, burstSeconds: UInt64 = 1) {
            self.average = average
            self.burst = burst
            self.burstSeconds = burstSeconds
        }
    }

    /// The largest value any limit may have (QEMU's `THROTTLE_VALUE_MAX`).
    public static let maximumValue: UInt64 = 1_000_000_000_000_000

    /// The six limits, indexed by `Kind.rawValue`.
    public var limits = [Limit](repeating: Limit(), count: Kind.allCases.count)
    /// Requests larger than this count as several for the iops limits (`iops_size`); 0: every request counts as one.
    public var iopsSize: UInt64 = 0

    /// No limits at all.
    public init() {}

    /// The limit of one kind.
    public subscript(kind: Kind) -> Limit {
        get { limits[kind.rawValue] }
        set { limits[kind.rawValue] = newValue }
    }

    /// Whether any limit is set (a device without any leaves its group).
    public var isEnabled: Bool { limits.contains { $0.average > 0 } }

    /// Why these limits cannot be used (QEMU's wording), or nil when they are valid.
    public var problem: String? {
        for (total, read, write) in [(Kind.bpsTotal, Kind.bpsRead, Kind.bpsWrite), (.iopsTotal, .iopsRead, .iopsWrite)] {
            let both = (self[total].average > 0 || self[total].burst > 0)
                && (self[read].average > 0 || self[write].average > 0 || self[read].burst > 0 || self[write].burst > 0)
            if both { return "bps/iops/max total values and read/write values cannot be used at the same time" }
        }
        for limit in limits {
            if limit.average > ThrottleLimits.maximumValue || limit.burst > ThrottleLimits.maximumValue {
                return "bps/iops/max values must be within [0, \(ThrottleLimits.maximumValue)]"
            }
            if limit.burstSeconds == 0 { return "the burst length cannot be 0" }
            if limit.burstSeconds > 1 && limit.burst == 0 {
                return "bps_max_length/iops_max_length require corresponding bps_max/iops_max values"
            }
            if limit.burst > 0 && limit.average == 0 { return "bps_max/iops_max require corresponding bps/iops values" }
            if limit.burst > 0 && limit.burst < limit.average { return "bps_max/iops_max cannot be lower than bps/iops values" }
            if limit.burst.multipliedReportingOverflow(by: limit.burstSeconds).overflow
                || limit.burst * limit.burstSeconds > ThrottleLimits.maximumValue {
                return "burst rate times burst length must be within [0, \(ThrottleLimits.maximumValue)]"
            }
        }
        if iopsSize > ThrottleLimits.maximumValue { return "iops_size must be within [0, \(ThrottleLimits.maximumValue)]" }
        return nil
    }
}
