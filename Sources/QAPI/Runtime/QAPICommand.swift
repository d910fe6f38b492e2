import JSON
import Synchronization

/// A QMP command as the schema defines it: its wire name, the type its
/// arguments decode to and the type of its result.
///
/// The generated `<Name>Command` enums conform; they have no cases and only
/// serve as type-level descriptions to register handlers with.
public protocol QAPICommand: Sendable {
    /// The name clients pass in "execute".
    static var name: String { get }
    /// The decoded arguments (`QAPIEmpty` when the command takes none).
    associatedtype Arguments: QAPIValue
    /// The result (`QAPIEmpty`, encoded `{}`, when the command returns nothing).
    associatedtype Result: QAPIValue
}

/// A QMP event as the schema defines it; the value is the event's "data".
public protocol QAPIEvent: QAPIValue {
    /// The event name, as sent in "event".
    static var name: String { get }
    /// Whether the event message carries a "data" member (false for events the schema gives no data).
    static var hasData: Bool { get }
}

extension QAPIEvent {
    public static var hasData: Bool { true }

    /// The whole event message: `{"event": NAME, "data": {...}, "timestamp": {...}}`.
    public func message(seconds: Int64, microseconds: Int64) -> JSONValue {
        var message: [String: JSONValue] = [
            "event": .string(Self.name),
            "timestamp": .object(["seconds": .integer(seconds), "microseconds": .integer(microseconds)]),
        ]
        if Self.hasData { message["data"] = json }
        return .object(message)
    }
}

/// The commands a QMP server can run, by name, with their handlers.
///
/// Handlers receive decoded arguments; decoding errors are reported with
/// QEMU's wording before the handler runs.  Registration and dispatch may
/// happen from any thread; handlers run on the caller's thread, outside the
/// table's lock.
public final class QMPCommandTable: Sendable {
    /// A handler that takes and returns raw JSON.
    public typealias Handler = @Sendable (JSONValue) throws(QAPIError) -> JSONValue

    private let handlers = Mutex<[String: Handler]>([:])

    /// An empty table.
    public init() {}

    /// Registers (or replaces) the handler of `command`.
    public func register<C: QAPICommand>(
        _ command: C.Type, _ body: @escaping @Sendable (C.Arguments) throws(QAPIError) -> C.Result
    ) {
        let handler: Handler = { (arguments: JSONValue) throws(QAPIError) -> JSONValue in
            let decoded = try C.Arguments(decoding: arguments, at: "")
            return try body(decoded).json
        }
        handlers.withLock { $0[C.name] = handler }
    }

    /// Removes the handler of the command named `name`, if any.
    public func unregister(_ name: String) {
        _ = handlers.withLock { $0.removeValue(forKey: name) }
    }

    /// Whether a command named `name` is registered.
    public func contains(_ name: String) -> Bool {
        handlers.withLock { $0[name] != nil }
    }

    /// Runs the command named `name` with the "arguments" of a QMP request
    /// (nil when the request had none, which means `{}`) and returns the
    /// value for the "return" member of the response.
    public func dispatch(_ name: String, arguments: JSONValue?) throws(QAPIError) -> JSONValue {
        guard let handler = handlers.withLock({ $0[name] }) else {
            throw .commandNotFound(name)
        }
        let arguments = arguments ?? .object([:])
        guard case .object = arguments else {
            throw .generic("QMP input member 'arguments' must be an object")
        }
        return try handler(arguments)
    }

    /// The names of the registered commands, sorted.
    public var registeredNames: [String] {
        handlers.withLock { $0.keys.sorted() }
    }
}
