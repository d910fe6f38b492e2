/// A configuration value as the command line, a config file or QMP supplies it: dotted key=value
/// strings or typed JSON.
public indirect enum OptionValue: Sendable, Equatable {
    /// A string (every key=value value starts as one).
    case string(String)
    /// A JSON integer.
    case integer(Int64)
    /// A JSON non-integer number.
    case double(Double)
    /// A JSON boolean.
    case bool(Bool)
    /// A JSON null.
    case null
    /// A JSON array, or key=value keys `name.0`, `name.1`, ...
    case array([OptionValue])
    /// A JSON object, or dotted key=value keys.
    case object([String: OptionValue])

    /// Parses a JSON text into a value.
    public static func parseJSON(_ text: String) throws(OptionError) -> OptionValue {
        var parser = JSONParser(Array(text.utf8))
        return try parser.parseDocument()
    }

    /// A short name of the value's type, for error messages.
    public var typeName: String {
        switch self {
        case .string: return "string"
        case .integer, .double: return "number"
        case .bool: return "boolean"
        case .null: return "null"
        case .array: return "array"
        case .object: return "object"
        }
    }
}

/// A configuration error, worded for the user: it names the key and the reason.
public struct OptionError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The message.
    public var message: String
    /// Creates an error.
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
