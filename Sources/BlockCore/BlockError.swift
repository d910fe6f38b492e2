#if canImport(Glibc)
import Glibc
#endif

/// A failed block operation: a POSIX errno and a message that names what failed.
public struct BlockError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The errno value (`EIO`, `ENOSPC`, `EINVAL`, ...).
    public var errno: Int32
    /// What failed, for logs and QMP errors.
    public var message: String

    /// Creates an error from an errno and a message.
    public init(errno: Int32, _ message: String) {
        self.errno = errno
        self.message = message
    }

    /// An error from the calling thread's current `errno`, with `what` describing the operation.
    public static func posix(_ what: String, errno code: Int32 = Glibc.errno) -> BlockError {
        BlockError(errno: code, "\(what): \(String(cString: strerror(code)))")
    }

    /// `EIO`.
    public static func io(_ message: String) -> BlockError { BlockError(errno: EIO, message) }
    /// `EINVAL`.
    public static func invalid(_ message: String) -> BlockError { BlockError(errno: EINVAL, message) }
    /// `EPERM`.
    public static func notPermitted(_ message: String) -> BlockError { BlockError(errno: EPERM, message) }
    /// `ENOTSUP`.
    public static func notSupported(_ message: String) -> BlockError { BlockError(errno: ENOTSUP, message) }

    public var description: String { message }
}
