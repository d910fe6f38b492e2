#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock
import Exports
import Sockets

/// One `--object` (or `object-add`) of the TLS and authorization family.
public enum SecurityObjectSpec: Sendable, Equatable {
    /// `tls-creds-x509`, `tls-creds-psk`, `tls-creds-anon`.
    case credentials(CredentialsSpec)
    /// `authz-simple`, `authz-list`, `authz-listfile`.
    case authorization(id: String, AuthorizationSpec)
    /// `secret`: a password or key that node options name (`password-secret`, `key-secret`).
    case secret(id: String, SecretSpec)

    /// The object's id.
    public var id: String {
        switch self {
        case .credentials(let spec): return spec.id
        case .authorization(let id, _): return id
        case .secret(let id, _): return id
        }
    }

    /// The object's type, as `qom-type` names it.
    public var type: String {
        switch self {
        case .credentials(let spec): return "tls-creds-\(spec.kind.rawValue)"
        case .authorization(_, .simple): return "authz-simple"
        case .authorization(_, .list): return "authz-list"
        case .authorization(_, .listFile): return "authz-listfile"
        case .secret: return "secret"
        }
    }

    /// The object types this family creates.
    static let types: Set<String> = ["tls-creds-x509", "tls-creds-psk", "tls-creds-anon", "authz-simple", "authz-list", "authz-listfile", "secret"]

    /// Reads one object of this family; nil when `qom-type` is another family's.
    static func parse(_ value: OptionValue, syntax: OptionSyntax = .commandLine) throws(OptionError) -> SecurityObjectSpec? {
        let reader = try OptionReader(value, context: "--object", syntax: syntax)
        let type = try reader.requiredString("qom-type")
        guard types.contains(type) else { return nil }
        let id = try reader.requiredString("id")
        guard syntax == .qmp || BlockGraph.isValidNodeName(id) else { throw OptionError("--object: invalid id '\(id)'") }
        let spec: SecurityObjectSpec
        switch type {
        case "authz-simple":
            spec = .authorization(id: id, .simple(identity: try reader.requiredString("identity")))
        case "authz-list":
            spec = .authorization(id: id, .list(try AuthorizationList.parse(reader)))
        case "secret":
            spec = .secret(id: id, try SecretSpec.parse(reader, id: id))
        case "authz-listfile":
            spec = .authorization(id: id, .listFile(path: try reader.requiredString("filename"), refresh: try reader.bool("refresh") ?? true))
        default:
            spec = .credentials(try CredentialsSpec.parse(reader, id: id, kind: TLSCredentials.Kind(rawValue: String(type.dropFirst("tls-creds-".count)))!))
        }
        try reader.finish()
        return spec
    }
}

/// A `tls-creds-*` object's properties.
public struct CredentialsSpec: Sendable, Equatable {
    /// `id`.
    public var id: String
    /// x509, psk or anon.
    public var kind: TLSCredentials.Kind
    /// `dir`: where the certificates, keys or `keys.psk` are.
    public var directory: String?
    /// `endpoint`: `server` (the default) or `client`.
    public var endpoint: String
    /// `verify-peer` (x509): clients must present a certificate the CA signed; on by default.
    public var verifyPeer: Bool
    /// `priority`: a GnuTLS priority string instead of blockd's default.
    public var priority: String?
    /// `username` (psk, client endpoint).
    public var username: String?

    static func parse(_ reader: OptionReader, id: String, kind: TLSCredentials.Kind) throws(OptionError) -> CredentialsSpec {
        let endpoint = try reader.choice("endpoint", ["server", "client"]) ?? "server"
        let spec = CredentialsSpec(
            id: id, kind: kind, directory: try reader.string("dir"), endpoint: endpoint,
            verifyPeer: try reader.bool("verify-peer") ?? true, priority: try reader.string("priority"),
            username: kind == .psk ? try reader.string("username") : nil)
        _ = try reader.string("sanity-check")
        _ = try reader.string("passwordid")
        if kind != .anon && spec.directory == nil {
            throw OptionError(reader.syntax == .qmp ? "Missing 'dir' property value" : "--object \(id): Missing 'dir' property value")
        }
        return spec
    }

    /// What a client node uses of these credentials; nil for a server endpoint.
    var client: ClientTLSCredentials? {
        guard endpoint == "client" else { return nil }
        return ClientTLSCredentials(
            kind: ClientTLSCredentials.Kind(rawValue: kind.rawValue) ?? .anon, directory: directory,
            username: username, verifyPeer: verifyPeer)
    }

    /// Loads the credentials a server needs from the directory.
    func load() throws(TLSError) -> TLSCredentials {
        if let directory, kind == .x509 { warnIfReadable("\(directory)/server-key.pem") }
        if let directory, kind == .psk { warnIfReadable("\(directory)/keys.psk") }
        return try TLSCredentials(kind: kind, directory: directory, verifyPeer: verifyPeer, priority: priority)
    }

    private func warnIfReadable(_ path: String) {
        var info = stat()
        if stat(path, &info) == 0 && info.st_mode & 0o077 != 0 {
            Log.warning("tls-creds-\(kind.rawValue) '\(id)': \(path) is readable by others (mode \(String(info.st_mode & 0o777, radix: 8))); make it 0600")
        }
    }
}

/// A live object of the family, as the registry holds it.
enum SecurityObject: Sendable {
    /// Credentials; `server` is loaded for server endpoints.
    case credentials(CredentialsSpec, server: TLSCredentials?)
    /// An authorization.
    case authorization(Authorization)
    /// A secret (its bytes live in `NodeObjects`).
    case secret
}
