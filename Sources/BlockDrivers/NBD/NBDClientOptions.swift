import BlockCore
import LogOptionsClock

/// Where a remote NBD server listens (`server` of the `nbd` driver, a SocketAddress).
public enum NBDServerAddress: Sendable, Equatable {
    /// A unix socket.
    case unix(path: String)
    /// A TCP host and port (the port as text, as SocketAddress spells it).
    case inet(host: String, port: String)
}

/// The options of an `nbd` node, as QEMU's BlockdevOptionsNbd names them.
public struct NBDClientOptions: Sendable {
    /// The server.
    public var address: NBDServerAddress
    /// The export name (`export`); nil asks for the server's default export ("").
    public var export: String?
    /// Seconds requests wait for the server to come back after it went away (`reconnect-delay`).
    public var reconnectDelay: UInt64 = 0
    /// Seconds the first connection is retried for (`open-timeout`; 0: one attempt).
    public var openTimeout: UInt64 = 0
    /// The TLS credentials of `tls-creds`; nil for a plaintext connection.
    public var tls: ClientTLSCredentials?

    /// Options for `address` and `export` with the defaults.
    public init(address: NBDServerAddress, export: String?) {
        self.address = address
        self.export = export
    }

    /// The flat keys of QEMU's earlier nbd options, taken besides the schema's members.
    public static let legacyKeys: Set<String> = ["host", "port", "path"]

    /// The node's filename as QEMU shows it: `nbd+unix:///EXPORT?socket=PATH` or `nbd://HOST:PORT/EXPORT`.
    public var uri: String {
        switch address {
        case .unix(let path):
            return export.map { "nbd+unix:///\($0)?socket=\(path)" } ?? "nbd+unix://?socket=\(path)"
        case .inet(let host, let port):
            return export.map { "nbd://\(host):\(port)/\($0)" } ?? "nbd://\(host):\(port)"
        }
    }

    /// The server as connection errors name it: the socket path, or HOST:PORT.
    public var serverDescription: String {
        switch address {
        case .unix(let path): return path
        case .inet(let host, let port): return "\(host):\(port)"
        }
    }

    /// Reads the options of an `nbd` node: `server.type=unix,server.path=` or
    /// `server.type=inet,server.host=,server.port=`, or the older top-level `path`, `host`, `port`.
    public static func read(_ options: OptionReader) throws(OptionError) -> NBDClientOptions {
        let legacy = options.has("host") || options.has("port") || options.has("path")
        let address: NBDServerAddress
        if let server = try options.object("server") {
            if legacy {
                throw options.failure("Cannot use 'server' and path/host at the same time")
            }
            address = try readAddress(server)
            try server.finish()
        } else if legacy {
            address = try readLegacyAddress(options)
        } else {
            throw options.missing("server")
        }
        var result = NBDClientOptions(address: address, export: try options.string("export"))
        let hostname = try options.string("tls-hostname")
        if let id = try options.string("tls-creds") {
            let credentials = try NodeObjects.shared.clientCredentials(id)
            guard credentials.kind != .anon else {
                throw options.failure("tls-creds '\(id)': anonymous TLS credentials are not supported by blockd's nbd client (use x509 or psk)")
            }
            result.tls = credentials
            if let hostname {
                // libnbd checks the certificate against the host it connects to, and cannot be
                // given another name: refuse what could not be enforced.
                guard case .inet(let host, _) = address, host == hostname else {
                    throw options.failure("tls-hostname: blockd's nbd client can only check the certificate against the server's host name")
                }
            }
        } else if hostname != nil {
            throw options.failure("tls-hostname is only allowed with tls-creds", qmp: "tls-hostname is set but tls-creds is not")
        }
        if try options.string("x-dirty-bitmap") != nil {
            throw options.failure("x-dirty-bitmap is not supported by blockd's nbd client")
        }
        if let delay = try options.unsigned("reconnect-delay") {
            guard delay <= UInt64(UInt32.max) else { throw options.badValue("reconnect-delay", String(delay), expected: "a uint32") }
            result.reconnectDelay = delay
        }
        if let timeout = try options.unsigned("open-timeout") {
            guard timeout <= UInt64(UInt32.max) else { throw options.badValue("open-timeout", String(timeout), expected: "a uint32") }
            result.openTimeout = timeout
        }
        return result
    }

    private static func readAddress(_ server: OptionReader) throws(OptionError) -> NBDServerAddress {
        switch try server.requiredChoice("type", ["inet", "unix", "vsock", "fd"]) {
        case "unix":
            let path = try server.requiredString("path")
            _ = try server.bool("abstract")
            _ = try server.bool("tight")
            return .unix(path: path)
        case "inet":
            let host = try server.requiredString("host")
            let port = try server.requiredString("port")
            for key in ["numeric", "ipv4", "ipv6", "keep-alive"] { _ = try server.bool(key) }
            _ = try server.unsigned("to")
            return .inet(host: host, port: try checkedPort(port, server))
        default:
            throw server.failure("server.type: only 'inet' and 'unix' are supported by blockd's nbd client",
                                 qmp: "Unsupported server address type for the nbd driver")
        }
    }

    private static func readLegacyAddress(_ options: OptionReader) throws(OptionError) -> NBDServerAddress {
        let path = try options.string("path")
        let host = try options.string("host")
        let port = try options.string("port")
        if path != nil && host != nil { throw options.failure("path and host may not be used at the same time") }
        if let path {
            if port != nil { throw options.failure("port may not be used without host") }
            return .unix(path: path)
        }
        guard let host else { throw options.failure("port may not be used without host") }
        return .inet(host: host, port: try checkedPort(port ?? "10809", options))
    }

    private static func checkedPort(_ port: String, _ options: OptionReader) throws(OptionError) -> String {
        guard let number = UInt16(port), number > 0 else {
            throw options.failure("port '\(port)' of the NBD server is not a number from 1 to 65535")
        }
        return String(number)
    }
}
