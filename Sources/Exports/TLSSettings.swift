import Sockets

/// TLS for an NBD server: the credentials every client must start TLS with, and who may connect.
public struct TLSSettings: Sendable {
    /// The server credentials (`tls-creds`).
    public var credentials: TLSCredentials
    /// The credentials object's id, for the log.
    public var credentialsID: String
    /// The authorization object's id (`tls-authz`), for the log; nil allows every client the
    /// credentials accept.
    public var authorizationID: String?
    /// Decides whether an identity (nil: the client has none) may connect; asked once per handshake.
    public var authorize: @Sendable (String?) -> Bool

    /// Creates settings.
    public init(credentials: TLSCredentials, credentialsID: String, authorizationID: String?, authorize: @escaping @Sendable (String?) -> Bool) {
        self.credentials = credentials
        self.credentialsID = credentialsID
        self.authorizationID = authorizationID
        self.authorize = authorize
    }
}

/// What a connection's TLS handshake agreed on.
public struct TLSDescription: Sendable {
    /// Protocol and cipher, e.g. "TLS1.3 AES-256-GCM".
    public var negotiated: String
    /// The client's identity (DN or PSK user name), if it has one.
    public var identity: String?
    /// Whether the kernel encrypts the records.
    public var kernel: Bool
}
