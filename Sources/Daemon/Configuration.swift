import BlockCore
import Exports
import Sockets

/// One `--nbd-server`: a listening address and its limits.
public struct NBDServerSpec: Sendable, Equatable {
    /// Where to listen.
    public var address: ListenAddress
    /// `max-connections` (0: the default, 100).
    public var maxConnections: Int
    /// `handshake-max-seconds`.
    public var handshakeSeconds: Double
}

/// One `--export type=nbd`.
public struct ExportSpec: Sendable, Equatable {
    /// `id`.
    public var id: String
    /// `node-name`: the node served.
    public var nodeName: String
    /// `name`: what clients ask for (defaults to the node name).
    public var name: String
    /// `description`.
    public var description: String?
    /// `writable`.
    public var writable: Bool
}

/// Everything the daemon was asked to do, checked for syntax before anything is opened.
public struct DaemonConfiguration: Sendable {
    /// `--blockdev` definitions, in order.
    public var blockdevs: [OptionValue] = []
    /// `--nbd-server` listeners.
    public var servers: [NBDServerSpec] = []
    /// `--export` definitions.
    public var exports: [ExportSpec] = []
    /// `--pidfile`.
    public var pidfile: String?
    /// `--daemonize`.
    public var daemonize = false
    /// `log-level` from the config file (the command line's wins).
    public var logLevel: String?

    /// Creates an empty configuration.
    public init() {}

    /// Parses the option texts of each kind (the values that followed `--blockdev`, `--nbd-server`, `--export`).
    public init(blockdevs: [String], servers: [String], exports: [String]) throws(OptionError) {
        for text in blockdevs {
            self.blockdevs.append(try KeyValueParser.parse(text))
        }
        for text in servers {
            self.servers.append(try DaemonConfiguration.parseServer(try KeyValueParser.parse(text)))
        }
        for text in exports {
            self.exports.append(try DaemonConfiguration.parseExport(try KeyValueParser.parse(text, impliedKey: "type")))
        }
    }

    /// Reads one `--nbd-server` object.
    public static func parseServer(_ value: OptionValue) throws(OptionError) -> NBDServerSpec {
        let reader = try OptionReader(value, context: "--nbd-server")
        guard let addr = try reader.object("addr") else { throw OptionError("--nbd-server: parameter 'addr' is missing") }
        let address = try ListenAddress.parse(addr)
        let maxConnections = try reader.unsigned("max-connections") ?? 0
        let handshake = try reader.unsigned("handshake-max-seconds") ?? 10
        if let creds = try reader.string("tls-creds") {
            throw OptionError("--nbd-server: tls-creds='\(creds)': TLS is not supported yet")
        }
        _ = try reader.string("tls-authz")
        try reader.finish()
        guard maxConnections <= 100_000, handshake > 0, handshake <= 3600 else {
            throw OptionError("--nbd-server: max-connections must be at most 100000 and handshake-max-seconds 1 to 3600")
        }
        if case .inet(_, let port) = address {
            guard let number = Int(port), (0...65535).contains(number) else {
                throw OptionError("--nbd-server: parameter 'addr.port' expects a port number from 0 to 65535, got '\(port)'")
            }
        }
        return NBDServerSpec(address: address, maxConnections: Int(maxConnections), handshakeSeconds: Double(handshake))
    }

    /// Reads one `--export` object.
    public static func parseExport(_ value: OptionValue) throws(OptionError) -> ExportSpec {
        let reader = try OptionReader(value, context: "--export")
        let type = try reader.requiredString("type")
        guard type == "nbd" else { throw OptionError("--export: type '\(type)' is not supported (only 'nbd')") }
        let id = try reader.requiredString("id")
        let context = "--export '\(id)'"
        let nodeName = try reader.requiredString("node-name")
        let name = try reader.string("name") ?? nodeName
        let description = try reader.string("description")
        let writable = try reader.bool("writable") ?? false
        _ = try reader.bool("writethrough")
        _ = try reader.string("iothread")
        _ = try reader.bool("fixed-iothread")
        if case .array(let bitmaps)? = reader.value("bitmaps"), !bitmaps.isEmpty {
            throw OptionError("\(context): dirty bitmap exports are not supported yet")
        }
        if try reader.bool("allocation-depth") == true {
            throw OptionError("\(context): allocation-depth is not supported yet")
        }
        try reader.finish()
        guard name.utf8.count <= 4096 else { throw OptionError("\(context): export name longer than 4096 bytes") }
        return ExportSpec(id: id, nodeName: nodeName, name: name, description: description, writable: writable)
    }
}

/// What the command line asked for, kept as text so that a reload can combine it with the config file anew.
public struct CommandLineOptions: Sendable {
    /// `--blockdev` values.
    public var blockdevs: [String] = []
    /// `--nbd-server` values.
    public var servers: [String] = []
    /// `--export` values.
    public var exports: [String] = []
    /// `--config FILE`.
    public var configPath: String?
    /// `--pidfile`.
    public var pidfile: String?
    /// `--daemonize`.
    public var daemonize = false

    /// Creates empty options.
    public init() {}

    /// The configuration: the config file's settings first, then the command line's.
    public func configuration() throws(OptionError) -> DaemonConfiguration {
        let file = try configPath.map { path throws(OptionError) in try ConfigFile.load(path) } ?? ConfigFile()
        var configuration = try DaemonConfiguration(
            blockdevs: file.blockdevs + blockdevs, servers: file.servers + servers, exports: file.exports + exports)
        configuration.pidfile = pidfile ?? file.pidfile
        configuration.daemonize = daemonize
        configuration.logLevel = file.logLevel
        return configuration
    }
}
