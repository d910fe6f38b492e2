#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Severity of a log line, with syslog's numbering for journald priority prefixes.
public enum LogLevel: Int, Sendable, Comparable, CaseIterable {
    case error = 3
    case warning = 4
    case info = 6
    case debug = 7

    /// The name `--log-level` takes.
    public var name: String {
        switch self {
        case .error: return "error"
        case .warning: return "warning"
        case .info: return "info"
        case .debug: return "debug"
        }
    }

    public static func < (lhs: LogLevel, rhs: LogLevel) -> Bool { lhs.rawValue > rhs.rawValue }

    /// The level `--log-level` or a `log-level` line names, or nil.
    public init?(name: String) {
        guard let level = LogLevel.allCases.first(where: { $0.name == name }) else { return nil }
        self = level
    }
}

/// Process-wide logging to standard error: one line per event, journald-friendly under systemd.
public enum Log {
    private static let threshold = Atomic<Int>(LogLevel.info.rawValue)
    private static let journal = getenv("JOURNAL_STREAM") != nil

    /// Sets the most verbose level printed.
    public static func setLevel(_ level: LogLevel) {
        threshold.store(level.rawValue, ordering: .relaxed)
    }

    /// True when lines of `level` are printed.
    @inline(__always)
    public static func enabled(_ level: LogLevel) -> Bool {
        level.rawValue <= threshold.load(ordering: .relaxed)
    }

    /// Prints one line at `level`.
    public static func write(_ level: LogLevel, _ message: @autoclosure () -> String) {
        guard enabled(level) else { return }
        let line = journal ? "<\(level.rawValue)>\(message())\n" : "blockd: \(level.name): \(message())\n"
        var bytes = Array(line.utf8)
        bytes.withUnsafeMutableBytes { _ = Glibc.write(2, $0.baseAddress, $0.count) }
    }

    /// An error line.
    public static func error(_ message: @autoclosure () -> String) { write(.error, message()) }
    /// A warning line.
    public static func warning(_ message: @autoclosure () -> String) { write(.warning, message()) }
    /// An informational line.
    public static func info(_ message: @autoclosure () -> String) { write(.info, message()) }
    /// A debugging line.
    public static func debug(_ message: @autoclosure () -> String) { write(.debug, message()) }
}
