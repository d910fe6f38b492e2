/// A failure of `blockd-nbd`, printed in one of qemu-nbd's three layouts.
public struct QemuNbdError: Error, Sendable, Equatable {
    /// Which of qemu-nbd's layouts the message takes.
    public enum Layout: Sendable, Equatable {
        /// getopt's complaint (`ARGV0: MESSAGE`), then `PROGRAM: Try `ARGV0 --help' ...`.
        case getopt
        /// `PROGRAM: MESSAGE`, then a bare `Try `ARGV0 --help' ...` line.
        case usage
        /// `PROGRAM: MESSAGE` alone.
        case plain
    }

    /// The layout.
    public var layout: Layout
    /// The message, without the program name.
    public var message: String

    /// A failure in the given layout.
    public init(_ message: String, layout: Layout = .plain) {
        self.message = message
        self.layout = layout
    }

    /// What qemu-nbd prints to standard error for this failure when run as `argv0`.
    public func text(argv0: String) -> String {
        let program = argv0.split(separator: "/").last.map(String.init) ?? argv0
        let tryHelp = "Try `\(argv0) --help' for more information."
        switch layout {
        case .getopt: return "\(argv0): \(message)\n\(program): \(tryHelp)\n"
        case .usage: return "\(program): \(message)\n\(tryHelp)\n"
        case .plain:
            // A message of two lines names the program on each (QemuNbdOptions.programMarker).
            let lines = message.split(separator: QemuNbdOptions.programMarker.first!, omittingEmptySubsequences: false)
            return lines.map { "\(program): \($0.hasSuffix("\n") ? String($0.dropLast()) : String($0))\n" }.joined()
        }
    }
}
