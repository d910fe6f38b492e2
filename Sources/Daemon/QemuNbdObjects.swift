import BlockCore
import LogOptionsClock

/// The `--object` definitions `blockd-nbd` takes: throttle groups are used; secrets, TLS
/// credentials and authorization objects are accepted (checked for a type and an id) so that
/// command lines that define them start; secrets, credentials and authorizations are then created
/// as blockd's `--object` creates them.
public enum QemuNbdObjects {
    /// The object types accepted.
    public static let types = [
        "throttle-group", "secret", "secret_keyring", "tls-creds-anon", "tls-creds-psk", "tls-creds-x509",
        "authz-simple", "authz-list", "authz-listfile", "authz-pam",
    ]

    /// `--tls-creds=ID`: QEMU's messages when no object has that id, it is not TLS credentials, or
    /// its endpoint is the wrong one (`server` to serve, `client` to list).
    public static func checkTLSCreds(_ id: String, in objects: [String], server: Bool) throws(QemuNbdError) {
        var found: (type: String, endpoint: String)?
        for text in objects {
            guard let (type, objectID) = try? typeAndID(text), objectID == id else { continue }
            var endpoint = "client"
            if case .object(let members)? = try? KeyValueParser.parse(text, impliedKey: "qom-type"),
               case .string(let given)? = members["endpoint"] {
                endpoint = given
            }
            found = (type, endpoint)
        }
        guard let found else { throw QemuNbdError("Failed to get TLS creds: No TLS credentials with id '\(id)'") }
        guard found.type.hasPrefix("tls-creds") else {
            throw QemuNbdError("Failed to get TLS creds: Object with id '\(id)' is not TLS credentials")
        }
        let wanted = server ? "server" : "client"
        guard found.endpoint == wanted else {
            throw QemuNbdError("Failed to get TLS creds: Expected TLS credentials for a \(wanted) endpoint")
        }
    }

    /// The type and id of one `--object` value; QEMU's messages for a bad one.
    public static func check(_ text: String) throws(QemuNbdError) {
        _ = try typeAndID(text)
    }

    /// The `qom-type` and `id` of an object definition.
    public static func typeAndID(_ text: String) throws(QemuNbdError) -> (type: String, id: String) {
        let value: OptionValue
        do {
            value = try KeyValueParser.parse(text, impliedKey: "qom-type")
        } catch {
            throw QemuNbdError(error.message)
        }
        guard case .object(let members) = value else { throw QemuNbdError("Parameter 'qom-type' is missing") }
        guard case .string(let type)? = members["qom-type"] else { throw QemuNbdError("Parameter 'qom-type' is missing") }
        guard types.contains(type) else { throw QemuNbdError("Parameter 'qom-type' does not accept value '\(type)'") }
        guard case .string(let id)? = members["id"] else { throw QemuNbdError("Parameter 'id' is missing") }
        if type == "secret" && members["data"] == nil && members["file"] == nil {
            throw QemuNbdError("Either 'file' or 'data' must be provided")
        }
        return (type, id)
    }
}
