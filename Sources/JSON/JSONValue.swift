/// A JSON value; integers stay exact (RFC 8259, as QMP and the option syntax use it).
public indirect enum JSONValue: Sendable, Equatable {
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
    case array([JSONValue])
    /// A JSON object, or dotted key=value keys.
    case object([String: JSONValue])

    /// Parses one JSON text.
    public static func parse(_ text: String) throws(JSONError) -> JSONValue {
        var parser = JSONParser(Array(text.utf8))
        return try parser.parseDocument()
    }

    /// Parses one JSON text from bytes.
    public static func parse(bytes: [UInt8]) throws(JSONError) -> JSONValue {
        var parser = JSONParser(bytes)
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

/// A JSON syntax error: QEMU's wording of what is wrong, and the byte offset where it was found.
public struct JSONError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What is wrong, in the words of QEMU's JSON parser ("expecting value").
    public var reason: String
    /// The byte offset in the text where the parser stopped.
    public var offset: Int
    /// Creates an error.
    public init(reason: String, offset: Int) {
        self.reason = reason
        self.offset = offset
    }
    /// The error for a person reading a command line or file: where, and what.
    public var message: String { "invalid JSON at byte \(offset): \(reason)" }
    public var description: String { message }
}
