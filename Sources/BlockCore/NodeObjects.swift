import LogOptionsClock
import Synchronization

/// TLS credentials as a client node uses them (a `tls-creds-*` object with `endpoint=client`).
public struct ClientTLSCredentials: Sendable, Equatable {
    /// x509 certificates, pre-shared keys, or anonymous.
    public enum Kind: String, Sendable { case x509, psk, anon }

    /// The kind of credentials.
    public var kind: Kind
    /// `dir`: ca-cert.pem, client-cert.pem and client-key.pem (x509), or keys.psk (psk).
    public var directory: String?
    /// `username` of a psk object (QEMU's default: `qemu`).
    public var username: String?
    /// `verify-peer`: the server's certificate must be signed by the CA.
    public var verifyPeer: Bool

    /// Describes client credentials.
    public init(kind: Kind, directory: String?, username: String?, verifyPeer: Bool) {
        self.kind = kind
        self.directory = directory
        self.username = username
        self.verifyPeer = verifyPeer
    }
}

/// The daemon's objects that node options name by id: `secret` objects (`password-secret`,
/// `key-secret`) and TLS credentials (`tls-creds`). The daemon fills it as objects come and go.
public final class NodeObjects: Sendable {
    /// The one store of the process.
    public static let shared = NodeObjects()

    private enum Credentials: Sendable { case client(ClientTLSCredentials), server }

    private let secrets = Mutex<[String: [UInt8]]>([:])
    private let credentials = Mutex<[String: Credentials]>([:])

    /// Sets (or replaces) the secret `id`.
    public func setSecret(_ id: String, _ value: [UInt8]) { secrets.withLock { $0[id] = value } }

    /// Sets (or replaces) TLS credentials; nil for credentials of a server endpoint.
    public func setCredentials(_ id: String, client: ClientTLSCredentials?) {
        credentials.withLock { $0[id] = client.map { .client($0) } ?? .server }
    }

    /// Forgets the object `id`, whichever kind it is.
    public func remove(_ id: String) {
        secrets.withLock { _ = $0.removeValue(forKey: id) }
        credentials.withLock { _ = $0.removeValue(forKey: id) }
    }

    /// The bytes of secret `id`; QEMU's message when there is none.
    public func secret(_ id: String) throws(OptionError) -> [UInt8] {
        guard let value = secrets.withLock({ $0[id] }) else { throw OptionError("No secret with id '\(id)'") }
        return value
    }

    /// The secret `id` as text (it must be UTF-8).
    public func secretText(_ id: String) throws(OptionError) -> String {
        let bytes = try secret(id)
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw OptionError("Data from secret \(id) is not valid UTF-8")
        }
        return text
    }

    /// The client credentials `id`, checked as QEMU checks them for a client.
    public func clientCredentials(_ id: String) throws(OptionError) -> ClientTLSCredentials {
        switch credentials.withLock({ $0[id] }) {
        case nil: throw OptionError("No TLS credentials with id '\(id)'")
        case .server?: throw OptionError("Expected TLS credentials for a client endpoint")
        case .client(let client)?: return client
        }
    }
}
