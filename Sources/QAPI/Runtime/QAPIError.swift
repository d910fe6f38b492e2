import JSON

/// The error classes a QMP error response can carry in its "class" member.
///
/// QEMU reports almost every failure as `GenericError`; the other classes are
/// kept for the cases the block interface documents by name.
public enum QMPErrorClass: String, Sendable, CaseIterable {
    /// Any failure without a more specific class.
    case genericError = "GenericError"
    /// The command name is unknown, or the command is not allowed right now.
    case commandNotFound = "CommandNotFound"
    /// The device needs a password before it can be used.
    case deviceEncrypted = "DeviceEncrypted"
    /// No block job runs on the named device.
    case deviceNotActive = "DeviceNotActive"
    /// The named device or node does not exist.
    case deviceNotFound = "DeviceNotFound"
    /// The device is not encrypted (block_passwd).
    case deviceNotEncrypted = "DeviceNotEncrypted"
    /// The device is busy, for example with a block job.
    case deviceInUse = "DeviceInUse"
    /// The operation is not supported by the device or driver.
    case notSupported = "NotSupported"
    /// An argument has a value the command cannot use.
    case invalidParameter = "InvalidParameter"
    /// A KVM capability is missing (never raised by blockd; listed for completeness).
    case kvmMissingCap = "KVMMissingCap"
}

/// A failed QMP command: an error class and a message for people.
///
/// Argument decoding produces these with QEMU's wording, and command handlers
/// throw them to make the server answer with `{"error": {"class": ..., "desc": ...}}`.
public struct QAPIError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The class reported in the "class" member of the error response.
    public var errorClass: QMPErrorClass
    /// The message reported in the "desc" member of the error response.
    public var description: String

    /// Creates an error of the given class.
    public init(_ errorClass: QMPErrorClass, _ description: String) {
        self.errorClass = errorClass
        self.description = description
    }

    /// The "error" object of a QMP error response.
    public var json: JSONValue {
        .object(["class": .string(errorClass.rawValue), "desc": .string(description)])
    }
}

extension QAPIError {
    /// The name QEMU prints for a value at `path`: the path itself, or a placeholder for the root.
    public static func displayName(_ path: String) -> String {
        path.isEmpty ? "<anonymous>" : path
    }

    /// A `GenericError` with the given message.
    public static func generic(_ message: String) -> QAPIError {
        QAPIError(.genericError, message)
    }

    /// `The command NAME has not been found` (CommandNotFound).
    public static func commandNotFound(_ name: String) -> QAPIError {
        QAPIError(.commandNotFound, "The command \(name) has not been found")
    }

    /// `Device 'NAME' not found` (DeviceNotFound).
    public static func deviceNotFound(_ device: String) -> QAPIError {
        QAPIError(.deviceNotFound, "Device '\(device)' not found")
    }

    /// `No active block job on device 'NAME'` (DeviceNotActive).
    public static func noActiveBlockJob(_ device: String) -> QAPIError {
        QAPIError(.deviceNotActive, "No active block job on device '\(device)'")
    }

    /// `Device 'NAME' is in use` (DeviceInUse).
    public static func deviceInUse(_ device: String) -> QAPIError {
        QAPIError(.deviceInUse, "Device '\(device)' is in use")
    }

    /// `Device 'NAME' is not encrypted` (DeviceNotEncrypted).
    public static func deviceNotEncrypted(_ device: String) -> QAPIError {
        QAPIError(.deviceNotEncrypted, "Device '\(device)' is not encrypted")
    }

    /// A `NotSupported` error with the given message.
    public static func notSupported(_ message: String) -> QAPIError {
        QAPIError(.notSupported, message)
    }

    /// `Invalid parameter 'NAME'` (InvalidParameter).
    public static func invalidParameter(_ name: String) -> QAPIError {
        QAPIError(.invalidParameter, "Invalid parameter '\(name)'")
    }

    /// `Parameter 'PATH' is missing`: a required member is absent.
    public static func missingParameter(_ path: String) -> QAPIError {
        .generic("Parameter '\(displayName(path))' is missing")
    }

    /// `Invalid parameter type for 'PATH', expected: TYPE`: a value has the wrong JSON type.
    public static func invalidParameterType(_ path: String, expected: String) -> QAPIError {
        .generic("Invalid parameter type for '\(displayName(path))', expected: \(expected)")
    }

    /// `Parameter 'PATH' is unexpected`: an object has a member the schema does not define.
    public static func unexpectedParameter(_ path: String) -> QAPIError {
        .generic("Parameter '\(displayName(path))' is unexpected")
    }

    /// `Parameter 'PATH' does not accept value 'VALUE'`: a string is not one of an enum's values.
    public static func invalidEnumValue(_ path: String, value: String) -> QAPIError {
        .generic("Parameter '\(displayName(path))' does not accept value '\(value)'")
    }

    /// `Parameter 'PATH' expects WHAT`: a value is out of range, such as an integer too large for its type.
    public static func invalidParameterValue(_ path: String, expects: String) -> QAPIError {
        .generic("Parameter '\(displayName(path))' expects \(expects)")
    }
}
