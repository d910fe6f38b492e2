import BlockCore
import LogOptionsClock
import Exports
import Sockets
import Synchronization

/// The live TLS credentials and authorization objects, by id; connection threads look authz up here.
final class SecurityRegistry: Sendable {
    private let objects = Mutex<[String: SecurityObject]>([:])

    /// The object with that id.
    func object(_ id: String) -> SecurityObject? { objects.withLock { $0[id] } }

    /// Whether an object of this family has that id.
    func contains(_ id: String) -> Bool { object(id) != nil }

    /// Creates (or, for an id that exists, replaces) an object: credentials of a server endpoint
    /// are loaded, a list file is read; errors leave the registry unchanged.
    func create(_ spec: SecurityObjectSpec) throws(OptionError) {
        let object: SecurityObject
        switch spec {
        case .credentials(let credentials):
            var loaded: TLSCredentials?
            if credentials.endpoint == "server" {
                do throws(TLSError) {
                    loaded = try credentials.load()
                } catch {
                    throw OptionError(error.message)
                }
            }
            object = .credentials(credentials, server: loaded)
            NodeObjects.shared.setCredentials(spec.id, client: credentials.client)
        case .authorization(let id, let authorization):
            object = .authorization(try Authorization(id: id, spec: authorization))
        case .secret(let id, let secret):
            NodeObjects.shared.setSecret(id, try secret.value())
            object = .secret
        }
        objects.withLock { $0[spec.id] = object }
    }

    /// Removes an object.
    func remove(_ id: String) {
        objects.withLock { _ = $0.removeValue(forKey: id) }
        NodeObjects.shared.remove(id)
    }

    /// The ids of every object.
    var ids: [String] { objects.withLock { Array($0.keys) } }

    /// Whether the authz object `id` allows `identity`; an id with no authz object allows no one,
    /// as in QEMU.
    func allows(_ identity: String?, by id: String) -> Bool {
        guard case .authorization(let authorization)? = object(id) else {
            Log.warning("tls-authz '\(id)': no authorization object with that id; client refused")
            return false
        }
        return authorization.allows(identity)
    }

    /// The server settings for `nbd-server-start`'s tls-creds and tls-authz, checked in QEMU's order.
    func serverSettings(credentials id: String, authorization: String?) throws(OptionError) -> TLSSettings {
        guard let object = object(id) else { throw OptionError("No TLS credentials with id '\(id)'") }
        guard case .credentials(_, let server) = object else { throw OptionError("Object with id '\(id)' is not TLS credentials") }
        guard let server else { throw OptionError("Expected TLS credentials for a server endpoint") }
        let authorize: @Sendable (String?) -> Bool
        if let authorization {
            authorize = { [self] identity in allows(identity, by: authorization) }
        } else {
            authorize = { _ in true }
        }
        return TLSSettings(credentials: server, credentialsID: id, authorizationID: authorization, authorize: authorize)
    }
}
