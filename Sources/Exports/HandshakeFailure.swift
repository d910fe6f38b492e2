import Synchronization

/// Why an NBD handshake ended without the client reaching an export (the metrics endpoint's
/// `reason` label).
public enum HandshakeFailure: String, Sendable, CaseIterable {
    /// The client did not finish within `handshake-max-seconds`.
    case timeout
    /// The client closed the connection (or it failed) before choosing an export.
    case closed
    /// Bad magic, unknown client flags or an oversized option.
    case `protocol`
    /// The client ended the handshake itself (`NBD_OPT_ABORT`, as `nbdinfo --list` does) or asked
    /// `NBD_OPT_EXPORT_NAME` for an export that does not exist.
    case aborted
    /// The TLS handshake failed or the client's certificate was refused.
    case tls
    /// The TLS client's identity is not authorized by `tls-authz`.
    case unauthorized
    /// The export was removed while the client negotiated.
    case exportRemoved = "export_removed"
    /// The connection limit was reached and the wait queue was full.
    case refused
}

/// Handshake failures counted by reason since the server started.
public final class HandshakeFailureCounters: Sendable {
    private let counts = Mutex<[UInt64]>([UInt64](repeating: 0, count: HandshakeFailure.allCases.count))
    private static let order = HandshakeFailure.allCases

    /// Creates zeroed counters.
    public init() {}

    /// Counts one failure.
    public func count(_ reason: HandshakeFailure) {
        let index = HandshakeFailureCounters.order.firstIndex(of: reason)!
        counts.withLock { $0[index] += 1 }
    }

    /// Every reason with its count.
    public var all: [(reason: HandshakeFailure, count: UInt64)] {
        let values = counts.withLock { $0 }
        return zip(HandshakeFailureCounters.order, values).map { ($0, $1) }
    }
}
