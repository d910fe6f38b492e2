import BlockCore
import LogOptionsClock

/// The options of an `rbd` node, as QEMU's BlockdevOptionsRbd names them.
struct RBDSettings: Sendable {
    var pool: String
    var namespace: String?
    var image: String
    var conf: String?
    var snapshot: String?
    var user: String?
    /// `auth-client-required`, joined as Ceph's `auth_client_required` wants it ("cephx;none").
    var authClientRequired: String?
    /// `server`: monitor addresses, as Ceph's `mon_host` wants them.
    var monHost: String?
    /// The cephx key of `key-secret`.
    var key: String?

    /// Reads the options; a snapshot implies read-only.
    static func read(_ options: OptionReader) throws(OptionError) -> RBDSettings {
        let pool = try options.requiredString("pool")
        let image = try options.requiredString("image")
        var settings = RBDSettings(pool: pool, namespace: try options.string("namespace"), image: image,
                                   conf: try options.string("conf"), snapshot: try options.string("snapshot"),
                                   user: try options.string("user"))
        if let secret = try options.string("key-secret") {
            // The cephx key (base64, as a keyring holds it), given to librados as its `key` option.
            settings.key = try NodeObjects.shared.secretText(secret)
        }
        switch options.value("auth-client-required") {
        case nil:
            break
        case .array(let modes)?:
            var names: [String] = []
            for mode in modes {
                guard case .string(let name) = mode, ["cephx", "none"].contains(name) else {
                    throw options.failure("auth-client-required: each mode must be 'cephx' or 'none'")
                }
                names.append(name)
            }
            settings.authClientRequired = names.joined(separator: ";")
        default:
            throw options.failure("auth-client-required: expected a list of 'cephx' and 'none'")
        }
        switch options.value("server") {
        case nil:
            break
        case .array(let servers)?:
            var hosts: [String] = []
            for (index, server) in servers.enumerated() {
                let entry = try OptionReader(server, context: "server.\(index)")
                let host = try entry.requiredString("host")
                let port = try entry.requiredString("port")
                try entry.finish()
                hosts.append(host.contains(":") && !host.hasPrefix("[") ? "[\(host)]:\(port)" : "\(host):\(port)")
            }
            settings.monHost = hosts.joined(separator: ",")
        default:
            throw options.failure("server: expected a list of {host, port}")
        }
        return settings
    }

    /// The `rados_conf_set` pairs the options imply, in order.
    var confPairs: [(String, String)] {
        var pairs: [(String, String)] = []
        if let monHost { pairs.append(("mon_host", monHost)) }
        if let authClientRequired { pairs.append(("auth_client_required", authClientRequired)) }
        if let key { pairs.append(("key", key)) }
        return pairs
    }

    /// QEMU's pseudo-filename for the image (`json:` aside): rbd:pool/namespace/image@snapshot.
    var filename: String {
        var name = "rbd:\(pool)/"
        if let namespace, !namespace.isEmpty { name += "\(namespace)/" }
        name += image
        if let snapshot { name += "@\(snapshot)" }
        return name
    }
}
