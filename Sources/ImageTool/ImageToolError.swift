import BlockCore
import LogOptionsClock

/// A failed `blockimg` command: the message for the user and the process exit code.
public struct ImageToolError: Error, Sendable, CustomStringConvertible {
    /// What went wrong, worded for the user.
    public var message: String
    /// The exit code (1 for most failures; `compare` uses 2 for errors).
    public var exitCode: Int32

    /// Creates an error.
    public init(_ message: String, exitCode: Int32 = 1) {
        self.message = message
        self.exitCode = exitCode
    }

    public var description: String { message }

    init(_ error: BlockError, _ context: String? = nil) {
        self.init(context.map { "\($0): \(error.message)" } ?? error.message)
    }

    init(_ error: OptionError) {
        self.init(error.message)
    }
}
