#if canImport(Glibc)
import Glibc
#endif
import CTLS

/// Server TLS credentials loaded from a `tls-creds-*` object's directory; sessions keep them alive.
public final class TLSCredentials: @unchecked Sendable {
    /// The kind of credentials, as the object types name them.
    public enum Kind: String, Sendable {
        /// `tls-creds-x509`: certificates.
        case x509
        /// `tls-creds-psk`: pre-shared keys.
        case psk
        /// `tls-creds-anon`: anonymous Diffie-Hellman (no identity).
        case anon
    }

    /// The kind.
    public let kind: Kind
    /// Whether x509 clients must present a certificate the CA signed.
    public let verifyPeer: Bool
    let handle: OpaquePointer

    /// Loads the credentials of `kind` from `directory`; the error carries the reason.
    public init(kind: Kind, directory: String?, verifyPeer: Bool, priority: String?) throws(TLSError) {
        var message = [CChar](repeating: 0, count: 512)
        let code: Int32 = switch kind {
        case .x509: Int32(BLK_TLS_X509)
        case .psk: Int32(BLK_TLS_PSK)
        case .anon: Int32(BLK_TLS_ANON)
        }
        guard let handle = blk_tls_creds_load(code, directory, verifyPeer ? 1 : 0, priority, &message, message.count) else {
            throw TLSError(String(decoding: message.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        self.kind = kind
        self.verifyPeer = verifyPeer
        self.handle = handle
    }

    /// The GnuTLS priority string sessions use.
    public var priority: String { String(cString: blk_tls_creds_priority(handle)) }

    /// Whether the kernel can encrypt records itself (the `tls` module is there).
    public static var kernelTLSAvailable: Bool { blk_tls_kernel_available() == 1 }

    deinit { blk_tls_creds_release(handle) }
}

/// A TLS failure, with GnuTLS's reason.
public struct TLSError: Error, Sendable, CustomStringConvertible {
    /// What went wrong.
    public let message: String
    /// Wraps a message.
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension [CChar] {
    /// The text up to the first NUL.
    var text: String { String(decoding: prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
}
