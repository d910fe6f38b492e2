/// Where options come from, which decides how strictly values are typed and how errors read.
public enum OptionSyntax: Sendable {
    /// Command line and config file: key=value strings are converted ("on", "64M"); messages name the option.
    case commandLine
    /// QMP: JSON types must match exactly; messages are QEMU's ("Parameter 'x' is missing").
    case qmp
}

/// Reads typed members out of an option object, remembers what was read, and rejects the rest,
/// so that every misspelt key is reported by name.
public final class OptionReader {
    /// What the options configure, e.g. "--blockdev 'disk0' (driver file)"; starts every message.
    public let context: String
    /// How values are typed and errors worded.
    public let syntax: OptionSyntax
    private let members: [String: OptionValue]
    private let prefix: String
    /// The path of these options' members in QMP messages ("file." for an inline child).
    public var memberPrefix: String { prefix }
    private var consumed: Set<String> = []

    /// Creates a reader over an object value.
    public init(_ value: OptionValue, context: String, prefix: String = "", syntax: OptionSyntax = .commandLine) throws(OptionError) {
        guard case .object(let members) = value else {
            if syntax == .qmp {
                throw OptionError("Invalid parameter type for '\(prefix.isEmpty ? "arguments" : String(prefix.dropLast()))', expected: object")
            }
            throw OptionError("\(context): expected an object\(prefix.isEmpty ? "" : " for '\(prefix.dropLast())'"), got a \(value.typeName)")
        }
        self.members = members
        self.context = context
        self.prefix = prefix
        self.syntax = syntax
    }

    /// An error worded for this reader's syntax: `qmp` through QMP, `commandLine` otherwise, each as it is.
    public func error(qmp: String, commandLine: String) -> OptionError {
        OptionError(syntax == .qmp ? qmp : commandLine)
    }

    /// An error about these options: through QMP, `qmp` (QEMU's wording) or else `message` alone;
    /// otherwise `message` after the context that names the options.
    public func failure(_ message: String, qmp: String? = nil) -> OptionError {
        error(qmp: qmp ?? message, commandLine: "\(context): \(message)")
    }

    /// The error for a member with a value it does not accept, in this reader's wording.
    public func badValue(_ key: String, _ value: String, expected: String) -> OptionError {
        failure("parameter '\(prefix)\(key)' expects \(expected), got '\(value)'", qmp: "Parameter '\(prefix)\(key)' does not accept value '\(value)'")
    }

    /// The error for a member nobody knows, in this reader's wording.
    public func unexpected(_ key: String) -> OptionError {
        failure("unknown parameter '\(prefix)\(key)'", qmp: "Parameter '\(prefix)\(key)' is unexpected")
    }

    /// The error for a required member that is absent, in this reader's wording.
    public func missing(_ key: String) -> OptionError {
        failure("parameter '\(prefix)\(key)' is missing", qmp: "Parameter '\(prefix)\(key)' is missing")
    }

    /// True when the key is present.
    public func has(_ key: String) -> Bool { members[key] != nil }

    /// The raw value of a key, marked as read.
    public func value(_ key: String) -> OptionValue? {
        consumed.insert(key)
        return members[key]
    }

    /// A string member.
    public func string(_ key: String) throws(OptionError) -> String? {
        guard let value = value(key) else { return nil }
        switch value {
        case .string(let text): return text
        case .integer(let number) where syntax == .commandLine: return String(number)
        default: throw typeError(key, "a string", value)
        }
    }

    /// A required string member.
    public func requiredString(_ key: String) throws(OptionError) -> String {
        guard let text = try string(key) else { throw missing(key) }
        return text
    }

    /// A boolean member: JSON true/false, or on/off, yes/no, true/false.
    public func bool(_ key: String) throws(OptionError) -> Bool? {
        guard let value = value(key) else { return nil }
        switch value {
        case .bool(let flag): return flag
        case .string(let text) where syntax == .commandLine:
            switch text {
            case "on", "yes", "true": return true
            case "off", "no", "false": return false
            default: throw OptionError("\(context): parameter '\(prefix)\(key)' expects 'on' or 'off', got '\(text)'")
            }
        default: throw typeError(key, "a boolean", value)
        }
    }

    /// An unsigned integer member, plain or as JSON.
    public func unsigned(_ key: String) throws(OptionError) -> UInt64? {
        guard let value = value(key) else { return nil }
        switch value {
        case .integer(let number) where number >= 0: return UInt64(number)
        case .string(let text) where syntax == .commandLine:
            guard let number = UInt64(text) else {
                throw OptionError("\(context): parameter '\(prefix)\(key)' expects a non-negative integer, got '\(text)'")
            }
            return number
        default: throw typeError(key, "a non-negative integer", value)
        }
    }

    /// A signed integer member, plain or as JSON.
    public func integer(_ key: String) throws(OptionError) -> Int64? {
        guard let value = value(key) else { return nil }
        switch value {
        case .integer(let number): return number
        case .string(let text) where syntax == .commandLine:
            guard let number = Int64(text) else {
                throw OptionError("\(context): parameter '\(prefix)\(key)' expects an integer, got '\(text)'")
            }
            return number
        default: throw typeError(key, "an integer", value)
        }
    }

    /// A list of objects, each read with a reader of its own (`key[0].` in QMP messages, `key.0.`
    /// on the command line, where `key.0.x=...` spells the list). An absent key is an empty list.
    public func objects(_ key: String) throws(OptionError) -> [OptionReader] {
        guard let value = value(key) else { return [] }
        guard case .array(let items) = value else {
            throw failure("parameter '\(prefix)\(key)' expects a list (\(key).0.NAME=...), got a \(value.typeName)",
                          qmp: "Invalid parameter type for '\(prefix)\(key)', expected: array")
        }
        var readers: [OptionReader] = []
        for (index, item) in items.enumerated() {
            let path = syntax == .qmp ? "\(prefix)\(key)[\(index)]." : "\(prefix)\(key).\(index)."
            readers.append(try OptionReader(item, context: context, prefix: path, syntax: syntax))
        }
        return readers
    }

    /// A size member: an integer with an optional k/M/G/T/P/E suffix (powers of 1024).
    public func size(_ key: String) throws(OptionError) -> UInt64? {
        guard let value = value(key) else { return nil }
        switch value {
        case .integer(let number) where number >= 0: return UInt64(number)
        case .string(let text) where syntax == .commandLine:
            guard let bytes = OptionReader.parseSize(text) else {
                throw OptionError("\(context): parameter '\(prefix)\(key)' expects a size (such as 4096, 64M or 1G), got '\(text)'")
            }
            return bytes
        default: throw typeError(key, "a size", value)
        }
    }

    /// One of a fixed set of names.
    public func choice(_ key: String, _ allowed: [String]) throws(OptionError) -> String? {
        guard let text = try string(key) else { return nil }
        guard allowed.contains(text) else {
            throw badValue(key, text, expected: "one of \(allowed.joined(separator: ", "))")
        }
        return text
    }

    /// A required signed integer member.
    public func requiredInteger(_ key: String) throws(OptionError) -> Int64 {
        guard let number = try integer(key) else { throw missing(key) }
        return number
    }

    /// A required member with one of a fixed set of names.
    public func requiredChoice(_ key: String, _ allowed: [String]) throws(OptionError) -> String {
        guard let text = try choice(key, allowed) else { throw missing(key) }
        return text
    }

    /// A nested object, read with a reader of its own.
    public func object(_ key: String) throws(OptionError) -> OptionReader? {
        guard let value = value(key) else { return nil }
        return try OptionReader(value, context: context, prefix: "\(prefix)\(key).", syntax: syntax)
    }

    /// Fails on the first member nobody read.
    public func finish() throws(OptionError) {
        if let unknown = members.keys.sorted().first(where: { !consumed.contains($0) }) {
            throw unexpected(unknown)
        }
    }

    /// Parses "4096", "64k", "1.5G" into bytes.
    public static func parseSize(_ text: String) -> UInt64? {
        let units: [Character: UInt64] = ["b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50, "e": 1 << 60]
        guard let last = text.last?.lowercased().first else { return nil }
        let (digits, multiplier) = units[last].map { (String(text.dropLast()), $0) } ?? (text, 1)
        if let whole = UInt64(digits) {
            let (product, overflow) = whole.multipliedReportingOverflow(by: multiplier)
            return overflow ? nil : product
        }
        guard multiplier > 1, let fraction = Double(digits), fraction >= 0, fraction * Double(multiplier) < 1.8e19 else { return nil }
        return UInt64(fraction * Double(multiplier))
    }

    private func typeError(_ key: String, _ expected: String, _ value: OptionValue) -> OptionError {
        guard syntax == .qmp else {
            return OptionError("\(context): parameter '\(prefix)\(key)' expects \(expected), got a \(value.typeName)")
        }
        let qapiName: String
        switch expected {
        case "a string": qapiName = "string"
        case "a boolean": qapiName = "boolean"
        case "an object": qapiName = "object"
        default: qapiName = "integer"
        }
        return OptionError("Invalid parameter type for '\(prefix)\(key)', expected: \(qapiName)")
    }
}
