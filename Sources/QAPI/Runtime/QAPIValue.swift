import JSON

/// A value that travels in QMP messages: it can be decoded from JSON, with
/// QEMU's error messages, and encoded back to JSON.
///
/// `path` is where the value sits in the arguments, used in error messages:
/// `""` for the arguments object itself, `"a"` for its member `a`,
/// `"a.b"` for a member of that, `"a[2]"` for an element of a list.
public protocol QAPIValue: Sendable {
    /// Decodes the value, throwing QEMU's message for the first problem found.
    init(decoding value: JSONValue, at path: String) throws(QAPIError)
    /// The value as JSON.
    var json: JSONValue { get }
}

// MARK: - Paths

/// Builds the paths used in decoding error messages.
public enum QAPIPath {
    /// The path of member `name` of the object at `path`.
    public static func member(_ path: String, _ name: String) -> String {
        path.isEmpty ? name : path + "." + name
    }

    /// The path of element `index` of the list at `path`.
    public static func element(_ path: String, _ index: Int) -> String {
        path + "[" + String(index) + "]"
    }
}

// MARK: - Objects

/// Reads the members of a JSON object one by one, the way QEMU's input
/// visitor does: members are looked up in schema order, so the first missing
/// or malformed one is reported, and members nobody asked for are reported
/// by `finish()`.
public struct QAPIObjectReader: Sendable {
    /// The path of the object.
    public let path: String
    /// The object's members.
    public let members: [String: JSONValue]
    private var visited: Set<String> = []

    /// Starts reading `value`, which must be an object.
    public init(_ value: JSONValue, at path: String) throws(QAPIError) {
        guard case .object(let members) = value else {
            throw .invalidParameterType(path, expected: "object")
        }
        self.path = path
        self.members = members
    }

    /// Decodes the required member `name`; it is an error if it is absent.
    public mutating func required<T: QAPIValue>(_ name: String, as type: T.Type = T.self) throws(QAPIError) -> T {
        visited.insert(name)
        guard let value = members[name] else {
            throw .missingParameter(QAPIPath.member(path, name))
        }
        return try T(decoding: value, at: QAPIPath.member(path, name))
    }

    /// Decodes the optional member `name`; nil when it is absent.
    public mutating func optional<T: QAPIValue>(_ name: String, as type: T.Type = T.self) throws(QAPIError) -> T? {
        visited.insert(name)
        guard let value = members[name] else { return nil }
        return try T(decoding: value, at: QAPIPath.member(path, name))
    }

    /// Fails with `Parameter 'x' is unexpected` for the first (by name) member that was not read.
    public func finish() throws(QAPIError) {
        if let extra = members.keys.filter({ !visited.contains($0) }).min() {
            throw .unexpectedParameter(QAPIPath.member(path, extra))
        }
    }
}

// MARK: - Empty object

/// An object with no members: the arguments of commands that take none, and
/// the result of commands that return nothing (encoded as `{}`).
public struct QAPIEmpty: QAPIValue, Equatable {
    /// The empty object.
    public init() {}

    /// Accepts `{}`; any member is reported as unexpected.
    public init(decoding value: JSONValue, at path: String) throws(QAPIError) {
        let reader = try QAPIObjectReader(value, at: path)
        try reader.finish()
    }

    public var json: JSONValue { .object([:]) }
}

// MARK: - Builtin types

extension String: QAPIValue {
    /// QAPI 'str'.
    public init(decoding value: JSONValue, at path: String) throws(QAPIError) {
        guard case .string(let text) = value else {
            throw .invalidParameterType(path, expected: "string")
        }
        self = text
    }

    public var json: JSONValue { .string(self) }
}

extension Bool: QAPIValue {
    /// QAPI 'bool'.
    public init(decoding value: JSONValue, at path: String) throws(QAPIError) {
        guard case .bool(let flag) = value else {
            throw .invalidParameterType(path, expected: "boolean")
        }
        self = flag
    }

    public var json: JSONValue { .bool(self) }
}

extension Double: QAPIValue {
    /// QAPI 'number': any JSON number.
    public init(decoding value: JSONValue, at path: String) throws(QAPIError) {
        switch value {
        case .double(let number): self = number
        case .integer(let number): self = Double(number)
        default: throw .invalidParameterType(path, expected: "number")
        }
    }

    public var json: JSONValue { .double(self) }
}

extension JSONValue: QAPIValue {
    /// QAPI 'any', and the unions and alternates the block layer decodes itself: any JSON value.
    public init(decoding value: JSONValue, at path: String) throws(QAPIError) {
        self = value
    }

    public var json: JSONValue { self }
}

extension Array: QAPIValue where Element: QAPIValue {
    /// A QAPI list: a JSON array whose elements all decode as `Element`.
    public init(decoding value: JSONValue, at path: String) throws(QAPIError) {
        guard case .array(let items) = value else {
            throw .invalidParameterType(path, expected: "array")
        }
        var decoded: [Element] = []
        decoded.reserveCapacity(items.count)
        for (index, item) in items.enumerated() {
            decoded.append(try Element(decoding: item, at: QAPIPath.element(path, index)))
        }
        self = decoded
    }

    public var json: JSONValue { .array(map { $0.json }) }
}

extension QAPIValue where Self: RawRepresentable, Self.RawValue == String {
    /// A QAPI enum: a string that must be one of the enum's values.
    public init(decoding value: JSONValue, at path: String) throws(QAPIError) {
        guard case .string(let text) = value else {
            throw .invalidParameterType(path, expected: "string")
        }
        guard let decoded = Self(rawValue: text) else {
            throw .invalidEnumValue(path, value: text)
        }
        self = decoded
    }

    public var json: JSONValue { .string(rawValue) }
}

// MARK: - Recursive members

/// Heap storage for a member whose type contains the struct it belongs to
/// (such as `ImageInfo.backingImage`); generated structs keep such members
/// in this box and expose them through a computed property of the plain type.
public enum QAPIIndirect<Wrapped: Sendable & Equatable>: Sendable, Equatable {
    indirect case boxed(Wrapped)

    /// Boxes `value`.
    public init(_ value: Wrapped) { self = .boxed(value) }

    /// The boxed value.
    public var value: Wrapped {
        switch self {
        case .boxed(let value): return value
        }
    }
}
