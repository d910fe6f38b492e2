import JSON

/// A configuration value as the command line, a config file or QMP supplies it: dotted key=value
/// strings (every value a string) or typed JSON.
public typealias OptionValue = JSONValue

extension JSONValue {
    /// Parses a JSON text into a value, with the error worded as a configuration error.
    public static func parseJSON(_ text: String) throws(OptionError) -> JSONValue {
        do {
            return try JSONValue.parse(text)
        } catch {
            throw OptionError(error.message)
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
