import JSON
import QAPI

/// One monitor client's protocol state (docs/interop/qmp-spec.txt): greeting, capabilities
/// negotiation, then commands. No I/O: lines of JSON in, JSON replies out (tested as transcripts).
public struct QMPSession {
    /// Whether `qmp_capabilities` has been accepted.
    public private(set) var negotiated = false
    /// Whether the client enabled out-of-band execution (`exec-oob`) when negotiating.
    public private(set) var outOfBand = false
    private let commands: QMPCommandTable

    /// Starts a session that dispatches to `commands`.
    public init(commands: QMPCommandTable) { self.commands = commands }

    /// The greeting sent on connect.
    public static func greeting(version: (major: Int64, minor: Int64, micro: Int64), package: String) -> JSONValue {
        .object(["QMP": .object([
            "version": .object([
                "qemu": .object(["major": .integer(version.major), "minor": .integer(version.minor), "micro": .integer(version.micro)]),
                "package": .string(package),
            ]),
            "capabilities": .array([.string("oob")]),
        ])])
    }

    /// Handles one piece of input; returns the reply to send, if any.
    public mutating func handle(_ piece: JSONStreamSplitter.Piece) -> JSONValue? {
        switch piece {
        case .error(let error):
            return QMPSession.error(.genericError, error.message, id: nil)
        case .value(let bytes):
            let request: JSONValue
            do {
                request = try JSONValue.parse(bytes: bytes)
            } catch {
                return QMPSession.error(.genericError, "JSON parse error, \(error.reason)", id: nil)
            }
            return handle(request)
        }
    }

    /// Handles one parsed request.
    public mutating func handle(_ request: JSONValue) -> JSONValue? {
        guard case .object(let members) = request else {
            return QMPSession.error(.genericError, "QMP input must be a JSON object", id: nil)
        }
        let id = members["id"]
        // QEMU's checks, in its order: every member known, one command name, arguments an object.
        // `exec-oob` is a member only once the client enabled out-of-band execution.
        for key in members.keys.sorted() where !["execute", "arguments", "id"].contains(key) && !(key == "exec-oob" && outOfBand) {
            return QMPSession.error(.genericError, "QMP input member '\(key)' is unexpected", id: id)
        }
        if members["execute"] != nil && members["exec-oob"] != nil {
            return QMPSession.error(.genericError, "QMP input member 'execute' clashes with 'exec-oob'", id: id)
        }
        let key = members["exec-oob"] != nil ? "exec-oob" : "execute"
        guard let named = members[key] else {
            return QMPSession.error(.genericError, "QMP input lacks member 'execute'", id: id)
        }
        guard case .string(let name) = named else {
            return QMPSession.error(.genericError, "QMP input member '\(key)' must be a string", id: id)
        }
        let arguments = members["arguments"]
        if let arguments, case .object = arguments {} else if arguments != nil {
            return QMPSession.error(.genericError, "QMP input member 'arguments' must be an object", id: id)
        }
        if key == "exec-oob" {
            // No command of a storage daemon runs out of band (QEMU's are migration commands).
            guard name == "qmp_capabilities" || commands.contains(name) else {
                return QMPSession.error(.commandNotFound, "The command \(name) has not been found", id: id)
            }
            return QMPSession.error(.genericError, "The command \(name) does not support OOB", id: id)
        }
        if name == "qmp_capabilities" {
            guard !negotiated else {
                return QMPSession.error(.commandNotFound, "Capabilities negotiation is already complete, command ignored", id: id)
            }
            let requested: QmpCapabilitiesArguments
            do {
                requested = try QmpCapabilitiesArguments(decoding: arguments ?? .object([:]), at: "")
            } catch {
                return QMPSession.error(error.errorClass, error.description, id: id)
            }
            // Out-of-band execution is the one capability; enabling it twice is enabling it.
            outOfBand = requested.enable?.contains(.oob) ?? false
            negotiated = true
            return QMPSession.success(.object([:]), id: id)
        }
        guard negotiated else {
            return QMPSession.error(.commandNotFound, "Expecting capabilities negotiation with 'qmp_capabilities'", id: id)
        }
        do {
            return QMPSession.success(try commands.dispatch(name, arguments: arguments), id: id)
        } catch {
            return QMPSession.error(error.errorClass, error.description, id: id)
        }
    }

    /// `{"return": ..., "id": ...}`.
    public static func success(_ result: JSONValue, id: JSONValue?) -> JSONValue {
        var reply: [String: JSONValue] = ["return": result]
        if let id { reply["id"] = id }
        return .object(reply)
    }

    /// `{"error": {"class": ..., "desc": ...}, "id": ...}`.
    public static func error(_ errorClass: QMPErrorClass, _ description: String, id: JSONValue?) -> JSONValue {
        var reply: [String: JSONValue] = ["error": .object(["class": .string(errorClass.rawValue), "desc": .string(description)])]
        if let id { reply["id"] = id }
        return .object(reply)
    }
}
