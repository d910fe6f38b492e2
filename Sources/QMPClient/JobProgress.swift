/// One job's progress as `blockctl job-wait` shows it: percent, rate and time left, as a bar for a
/// terminal or as a plain line for a log. Pure: times are arguments.
public struct JobProgress: Sendable {
    /// The job's identifier.
    public let id: String
    /// The job's type (mirror, backup, ...), once known.
    public var type = ""
    /// The job's status (running, ready, paused, ...).
    public var status = ""
    /// Bytes done.
    public private(set) var offset: Int64 = 0
    /// Bytes expected in all.
    public private(set) var length: Int64 = 0
    /// Bytes per second, smoothed; nil until two samples were seen.
    public private(set) var rate: Double?
    private var lastSample: (offset: Int64, seconds: Double)?

    /// A job not sampled yet.
    public init(id: String) { self.id = id }

    /// Takes a new sample of the job's progress at `seconds` (any monotonic clock).
    public mutating func sample(offset: Int64, length: Int64, at seconds: Double) {
        if let last = lastSample, seconds > last.seconds {
            let instant = Double(max(0, offset - last.offset)) / (seconds - last.seconds)
            rate = rate.map { 0.7 * $0 + 0.3 * instant } ?? instant
        }
        if lastSample == nil || seconds > lastSample!.seconds { lastSample = (offset, seconds) }
        self.offset = offset
        self.length = length
    }

    /// Percent done, 0...100.
    public var percent: Double {
        guard length > 0 else { return status == "ready" || status == "concluded" ? 100 : 0 }
        return min(100, Double(offset) * 100 / Double(length))
    }

    /// Seconds left at the current rate; nil when unknown.
    public var secondsLeft: Double? {
        guard let rate, rate > 0, length >= offset else { return nil }
        return Double(length - offset) / rate
    }

    /// The plain line: `m1: mirror running 50.0% 8.0 MiB/16.0 MiB 4.0 MiB/s ETA 0:02`.
    public var line: String {
        "\(id): \(type) \(status) \(String(percent: percent)) \(JobProgress.bytes(offset))/\(JobProgress.bytes(length))"
            + " \(rate.map { JobProgress.bytes(Int64($0)) + "/s" } ?? "-/s") ETA \(secondsLeft.map(JobProgress.clock) ?? "-")"
    }

    /// The terminal line: a bar of `width` cells before the same figures.
    public func bar(width: Int = 30) -> String {
        let filled = Int((percent / 100 * Double(width)).rounded(.down))
        let cells = String(repeating: "#", count: filled) + String(repeating: ".", count: max(0, width - filled))
        return "\(id) [\(cells)] \(String(percent: percent)) \(status) \(JobProgress.bytes(offset))/\(JobProgress.bytes(length))"
            + " \(rate.map { JobProgress.bytes(Int64($0)) + "/s" } ?? "-/s") ETA \(secondsLeft.map(JobProgress.clock) ?? "-")"
    }

    /// Bytes with a binary unit and one decimal (`1.5 MiB`).
    public static func bytes(_ count: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(count)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(count) B" : "\(String(tenths: value)) \(units[unit])"
    }

    /// Seconds as `m:ss` (or `h:mm:ss`).
    public static func clock(_ seconds: Double) -> String {
        let total = Int(seconds.rounded(.up))
        let (hours, minutes, rest) = (total / 3600, total / 60 % 60, total % 60)
        let twoDigits = { (value: Int) in value < 10 ? "0\(value)" : "\(value)" }
        return hours > 0 ? "\(hours):\(twoDigits(minutes)):\(twoDigits(rest))" : "\(minutes):\(twoDigits(rest))"
    }
}

extension String {
    /// A percentage with one decimal: `42.5%`.
    init(percent: Double) { self = String(tenths: percent) + "%" }

    /// A number with one decimal.
    init(tenths value: Double) {
        let scaled = Int((value * 10).rounded())
        self = "\(scaled / 10).\(scaled % 10)"
    }
}
