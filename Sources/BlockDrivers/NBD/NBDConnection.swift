#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock
import CLibNBD

/// One libnbd handle connected to the remote export; closed when the last reference goes.
final class NBDConnection: @unchecked Sendable {
    let handle: OpaquePointer

    private init(handle: OpaquePointer) {
        self.handle = handle
    }

    deinit { nbd_close(handle) }

    /// The last libnbd error of this thread, as text.
    static var lastError: String {
        guard let text = nbd_get_error() else { return "unknown error" }
        return String(cString: text)
    }

    /// Connects to the server and negotiates the export, giving up at `deadline` (MonotonicClock
    /// nanoseconds). The error names what failed.
    static func connect(_ options: NBDClientOptions, deadline: UInt64) throws(BlockError) -> NBDConnection {
        guard let handle = nbd_create() else { throw .io("could not create an NBD handle: \(lastError)") }
        let connection = NBDConnection(handle: handle)
        nbd_set_export_name(handle, options.export ?? "")
        nbd_add_meta_context(handle, "base:allocation")
        nbd_add_meta_context(handle, "qemu:allocation-depth")
        nbd_set_pread_initialize(handle, false)
        if let tls = options.tls { try connection.requireTLS(tls) }
        let started: Int32
        switch options.address {
        case .unix(let path): started = nbd_aio_connect_unix(handle, path)
        case .inet(let host, let port): started = nbd_aio_connect_tcp(handle, host, port)
        }
        guard started == 0 else { throw connection.failure() }
        while nbd_aio_is_ready(handle) == 0 {
            if nbd_aio_is_dead(handle) != 0 || nbd_aio_is_closed(handle) != 0 { throw connection.failure() }
            let now = MonotonicClock.nanoseconds()
            guard now < deadline else {
                throw BlockError(errno: ETIMEDOUT, "no answer from the NBD server within the open timeout")
            }
            let wait = Int32(min((deadline - now) / 1_000_000 + 1, 1000))
            if nbd_poll(handle, wait) < 0 { throw connection.failure() }
        }
        return connection
    }

    /// Makes the connection require TLS with these credentials (x509 directory or psk key file).
    private func requireTLS(_ tls: ClientTLSCredentials) throws(BlockError) {
        guard nbd_set_tls(handle, LIBNBD_TLS_REQUIRE) == 0 else { throw failure() }
        switch tls.kind {
        case .x509:
            if let directory = tls.directory, nbd_set_tls_certificates(handle, directory) != 0 { throw failure() }
            guard nbd_set_tls_verify_peer(handle, tls.verifyPeer) == 0 else { throw failure() }
        case .psk:
            guard nbd_set_tls_psk_file(handle, "\(tls.directory ?? ".")/keys.psk") == 0,
                  nbd_set_tls_username(handle, tls.username ?? "qemu") == 0 else { throw failure() }
        case .anon:
            throw BlockError(errno: ENOTSUP, "anonymous TLS is not supported by blockd's nbd client")
        }
    }

    private func failure() -> BlockError {
        let code = nbd_get_errno()
        return BlockError(errno: code > 0 ? code : EIO, NBDConnection.cleaned(NBDConnection.lastError))
    }

    /// A libnbd message without the name of the call that failed ("nbd_aio_connect_unix: connect: ...").
    static func cleaned(_ message: String) -> String {
        var text = Substring(message)
        while let colon = text.firstRange(of: ": "), text[..<colon.lowerBound].hasPrefix("nbd_") {
            text = text[colon.upperBound...]
        }
        // A refused or missing socket reads as QEMU words it: the errno text alone.
        if text.hasPrefix("connect: ") { text = text.dropFirst("connect: ".count) }
        return String(text)
    }

    /// The socket, or -1 once the connection is dead.
    var fd: Int32 { nbd_aio_get_fd(handle) }
    /// True while libnbd has bytes to send.
    var wantsWrite: Bool { nbd_aio_get_direction(handle) & UInt32(LIBNBD_AIO_DIRECTION_WRITE) != 0 }
    /// True when the connection can no longer carry commands.
    var isDead: Bool { nbd_aio_is_dead(handle) != 0 || nbd_aio_is_closed(handle) != 0 }
    /// The export's size in bytes.
    var size: Int64 { nbd_get_size(handle) }
    /// True when the server said the export is read-only.
    var isReadOnly: Bool { nbd_is_read_only(handle) == 1 }
    func can(_ query: (OpaquePointer) -> Int32) -> Bool { query(handle) == 1 }
    /// True when `context` was negotiated.
    func hasContext(_ context: String) -> Bool { nbd_can_meta_context(handle, context) == 1 }
    /// A block size constraint (`LIBNBD_SIZE_*`), or 0 when the server gave none.
    func blockSize(_ kind: Int32) -> Int64 { max(0, nbd_get_block_size(handle, kind)) }
}
