#if canImport(Glibc)
import Glibc
#endif
import CTLS

/// One connection's server TLS session: handshake, then record I/O from the connection's thread.
public final class TLSChannel: @unchecked Sendable {
    let session: OpaquePointer
    /// The credentials, kept alive as long as the session.
    public let credentials: TLSCredentials
    private var closeNotify = false

    /// Starts a server session on a connected socket.
    public init(fd: Int32, credentials: TLSCredentials) throws(TLSError) {
        var message = [CChar](repeating: 0, count: 512)
        guard let session = blk_tls_session_new(credentials.handle, fd, &message, message.count) else { throw TLSError(message.text) }
        self.session = session
        self.credentials = credentials
    }

    /// Runs the handshake (bounded by the socket's timeouts).
    public func handshake() throws(TLSError) {
        var message = [CChar](repeating: 0, count: 512)
        guard blk_tls_handshake(session, &message, message.count) == 0 else { throw TLSError(message.text) }
        closeNotify = true
    }

    /// Checks the peer and returns its identity: the certificate's distinguished name, the PSK user
    /// name, or nil for none (anonymous, or x509 without verify-peer and no certificate).
    public func peerIdentity() throws(TLSError) -> String? {
        var identity = [CChar](repeating: 0, count: 4096)
        var message = [CChar](repeating: 0, count: 1024)
        guard blk_tls_peer_identity(session, &identity, identity.count, &message, message.count) == 0 else {
            throw TLSError(message.text)
        }
        let text = identity.text
        return text.isEmpty ? nil : text
    }

    /// The protocol version and cipher negotiated, e.g. "TLS1.3 AES-256-GCM".
    public var negotiated: String {
        var buffer = [CChar](repeating: 0, count: 128)
        blk_tls_describe(session, &buffer, buffer.count)
        return buffer.text
    }

    /// What handing the keys to the kernel did.
    public enum KernelOffload: Sendable {
        /// The kernel now encrypts: the socket is used as a plain one.
        case enabled
        /// The session stays in userspace.
        case unavailable
        /// The socket was half switched and cannot be used.
        case failed
    }

    /// Hands the record keys to the kernel when it can take them.
    public func offloadToKernel() -> KernelOffload {
        switch blk_tls_enable_kernel(session) {
        case 1:
            closeNotify = false
            return .enabled
        case 0: return .unavailable
        default: return .failed
        }
    }

    /// Receives plaintext; 0 at end of stream, nil on error.
    @inline(__always)
    func receive(into base: UnsafeMutableRawPointer, count: Int) -> Int? {
        let result = blk_tls_recv(session, base, count)
        return result < 0 ? nil : result
    }

    /// Sends every byte.
    @inline(__always)
    func send(_ base: UnsafeRawPointer, count: Int) -> Bool { blk_tls_send(session, base, count) == 0 }

    /// Sends every byte of the vectors; false with errno `EFAULT` when memory could not be read.
    @inline(__always)
    func send(_ vectors: UnsafeMutableBufferPointer<iovec>) -> Bool {
        blk_tls_sendv(session, vectors.baseAddress, Int32(vectors.count)) == 0
    }

    deinit { blk_tls_session_free(session, closeNotify ? 1 : 0) }
}
