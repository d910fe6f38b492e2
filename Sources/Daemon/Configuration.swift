import BlockCore
import Exports
import Sockets
import LogOptionsClock

/// One `--nbd-server`: a listening address and its limits.
public struct NBDServerSpec: Sendable, Equatable {
    /// Where to listen.
    public var address: ListenAddress
    /// `max-connections` (0: the default, 100).
    public var maxConnections: Int
    /// `handshake-max-seconds`.
    public var handshakeSeconds: Double
    /// `tls-creds`: clients must start TLS with these credentials.
    public var tlsCreds: String? = nil
    /// `tls-authz`: the authorization object TLS clients' identities are checked with.
    public var tlsAuthz: String? = nil
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
    /// `x-resize`: clients may resize the medium with `NBD_CMD_RESIZE` (experimental RESIZE extension).
    public var resizable = false
    /// `allocation-depth`: offer the `qemu:allocation-depth` meta context.
    public var allocationDepth = false
    /// Whether multi-conn is advertised when the node makes it safe (blockd-nbd turns it off with `-e 1`, as qemu-nbd).
    public var multiConn = true
    /// `bitmaps`: dirty bitmaps offered as `qemu:dirty-bitmap:NAME`, by name (found on the node or
    /// below it) or by node and name.
    public var bitmaps: [ExportBitmap] = []
}

/// A bitmap an export offers: its name, and its node when given (`{"node": ..., "name": ...}`).
public struct ExportBitmap: Sendable, Equatable {
    /// The node that holds it; nil: the exported node or one below it.
    public var node: String?
    /// The bitmap's name.
    public var name: String
}

/// One `--chardev socket`: a listening socket a monitor can use.
public struct ChardevSpec: Sendable, Equatable {
    /// `id`.
    public var id: String
    /// Where it listens.
    public var address: ListenAddress
}

/// One `--monitor`: a QMP monitor on a chardev.
public struct MonitorSpec: Sendable, Equatable {
    /// `chardev`.
    public var chardev: String
    /// `pretty`: indented JSON replies.
    public var pretty: Bool
}

/// The text of one option's value, and where it came from when that was a config file.
public struct OptionText: Sendable, Equatable, ExpressibleByStringLiteral {
    /// The value, as after `--blockdev` and the like.
    public var text: String
    /// `FILE:LINE`, or nil for the command line.
    public var location: String?

    /// Creates a value.
    public init(_ text: String, location: String? = nil) {
        self.text = text
        self.location = location
    }

    public init(stringLiteral value: String) { self.init(value) }

    /// Runs `body`, putting the location in front of its error.
    func located<T>(_ body: () throws(OptionError) -> T) throws(OptionError) -> T {
        do {
            return try body()
        } catch {
            throw error.at(location)
        }
    }
}

extension OptionError {
    /// The error with `FILE:LINE: ` in front when there is a location.
    func at(_ location: String?) -> OptionError {
        location.map { OptionError("\($0): \(message)") } ?? self
    }
}

/// Everything the daemon was asked to do, checked for syntax before anything is opened.
public struct DaemonConfiguration: Sendable {
    /// `--blockdev` definitions, in order.
    public var blockdevs: [OptionValue] = []
    /// Where each `--blockdev` came from (`FILE:LINE`, or nil), parallel to `blockdevs`.
    public var blockdevLocations: [String?] = []
    /// `--nbd-server` listeners.
    public var servers: [NBDServerSpec] = []
    /// `--export` definitions.
    public var exports: [ExportSpec] = []
    /// `--chardev` definitions.
    public var chardevs: [ChardevSpec] = []
    /// `--monitor` definitions.
    public var monitors: [MonitorSpec] = []
    /// `--object throttle-group` definitions.
    public var throttleGroups: [ThrottleGroupSpec] = []
    /// `--object tls-creds-*` and `authz-*` definitions.
    public var securityObjects: [SecurityObjectSpec] = []
    /// `--pidfile`.
    public var pidfile: String?
    /// `--daemonize`.
    public var daemonize = false
    /// `log-level` from the config file (the command line's wins).
    public var logLevel: String?
    /// `--metrics`: where the Prometheus endpoint listens (the last one given wins).
    public var metrics: ListenAddress?

    /// Creates an empty configuration.
    public init() {}

    /// Parses the option texts of each kind (the values that followed `--blockdev`, `--nbd-server`, `--export`).
    public init(
        blockdevs: [OptionText], servers: [OptionText], exports: [OptionText], chardevs: [OptionText] = [], monitors: [OptionText] = [],
        objects: [OptionText] = []
    ) throws(OptionError) {
        func parse(_ item: OptionText, _ option: String, impliedKey: String? = nil) throws(OptionError) -> OptionValue {
            do {
                return try KeyValueParser.parse(item.text, impliedKey: impliedKey)
            } catch {
                throw OptionError("\(option): \(error.message)")
            }
        }
        for item in objects {
            if let security = try item.located({ () throws(OptionError) in
                try SecurityObjectSpec.parse(try parse(item, "--object", impliedKey: "qom-type"))
            }) {
                guard !self.securityObjects.contains(where: { $0.id == security.id }) && !self.throttleGroups.contains(where: { $0.id == security.id }) else {
                    throw OptionError("--object: id '\(security.id)' is used twice").at(item.location)
                }
                self.securityObjects.append(security)
                continue
            }
            let group = try item.located { () throws(OptionError) in
                try ThrottleOptions.parseObject(try parse(item, "--object", impliedKey: "qom-type"))
            }
            guard !self.throttleGroups.contains(where: { $0.id == group.id }) && !self.securityObjects.contains(where: { $0.id == group.id }) else {
                throw OptionError("--object: id '\(group.id)' is used twice").at(item.location)
            }
            self.throttleGroups.append(group)
        }
        for item in blockdevs {
            self.blockdevs.append(try item.located { () throws(OptionError) in try parse(item, "--blockdev") })
            self.blockdevLocations.append(item.location)
        }
        for item in servers {
            self.servers.append(try item.located { () throws(OptionError) in
                try DaemonConfiguration.parseServer(try parse(item, "--nbd-server"))
            })
        }
        for item in exports {
            self.exports.append(try item.located { () throws(OptionError) in
                try DaemonConfiguration.parseExport(try parse(item, "--export", impliedKey: "type"))
            })
        }
        for item in chardevs {
            let chardev = try item.located { () throws(OptionError) in
                try DaemonConfiguration.parseChardev(try parse(item, "--chardev", impliedKey: "backend"))
            }
            guard !self.chardevs.contains(where: { $0.id == chardev.id }) else {
                throw OptionError("--chardev: id '\(chardev.id)' is used twice").at(item.location)
            }
            self.chardevs.append(chardev)
        }
        for item in monitors {
            let monitor = try item.located { () throws(OptionError) in
                try DaemonConfiguration.parseMonitor(try parse(item, "--monitor", impliedKey: "chardev"))
            }
            guard self.chardevs.contains(where: { $0.id == monitor.chardev }) else {
                throw OptionError("--monitor: no --chardev with id '\(monitor.chardev)'").at(item.location)
            }
            self.monitors.append(monitor)
        }
    }

    /// Reads one `--nbd-server` object.
    public static func parseServer(_ value: OptionValue) throws(OptionError) -> NBDServerSpec {
        let reader = try OptionReader(value, context: "--nbd-server")
        guard let addr = try reader.object("addr") else { throw OptionError("--nbd-server: parameter 'addr' is missing") }
        let address = try ListenAddress.parse(addr)
        let maxConnections = try reader.unsigned("max-connections") ?? 0
        let handshake = try reader.unsigned("handshake-max-seconds") ?? 10
        let tlsCreds = try reader.string("tls-creds")
        let tlsAuthz = try reader.string("tls-authz")
        try reader.finish()
        if tlsAuthz != nil && tlsCreds == nil { throw OptionError("--nbd-server: tls-authz is not supported without tls-creds") }
        guard maxConnections <= 100_000, handshake > 0, handshake <= 3600 else {
            throw OptionError("--nbd-server: max-connections must be at most 100000 and handshake-max-seconds 1 to 3600")
        }
        if case .inet(_, let port) = address {
            guard let number = Int(port), (0...65535).contains(number) else {
                throw OptionError("--nbd-server: parameter 'addr.port' expects a port number from 0 to 65535, got '\(port)'")
            }
        }
        return NBDServerSpec(address: address, maxConnections: Int(maxConnections), handshakeSeconds: Double(handshake), tlsCreds: tlsCreds, tlsAuthz: tlsAuthz)
    }

    /// Reads one `--metrics` object: `addr.type=inet,addr.host=H,addr.port=P` or `addr.type=unix,addr.path=PATH`.
    public static func parseMetrics(_ value: OptionValue) throws(OptionError) -> ListenAddress {
        let reader = try OptionReader(value, context: "--metrics")
        guard let addr = try reader.object("addr") else { throw OptionError("--metrics: parameter 'addr' is missing") }
        let address = try ListenAddress.parse(addr)
        try reader.finish()
        switch address {
        case .inet(_, let port):
            guard let number = Int(port), (0...65535).contains(number) else {
                throw OptionError("--metrics: parameter 'addr.port' expects a port number from 0 to 65535, got '\(port)'")
            }
        case .unix:
            break
        case .fd, .fdName:
            throw OptionError("--metrics: addr.type must be inet or unix")
        }
        return address
    }

    /// Reads one `--chardev` object: `socket,id=ID,path=PATH,server=on,wait=off` or `host=H,port=P`.
    public static func parseChardev(_ value: OptionValue) throws(OptionError) -> ChardevSpec {
        let reader = try OptionReader(value, context: "--chardev")
        let backend = try reader.requiredString("backend")
        guard backend == "socket" else { throw OptionError("--chardev: backend '\(backend)' is not supported (only 'socket')") }
        let id = try reader.requiredString("id")
        let context = "--chardev '\(id)'"
        guard try reader.bool("server") ?? false else {
            throw OptionError("\(context): only server=on sockets are supported (blockd listens for monitor clients)")
        }
        if try reader.bool("wait") == true {
            throw OptionError("\(context): wait=on is not supported; use wait=off")
        }
        _ = try reader.bool("nodelay")
        _ = try reader.bool("telnet")
        _ = try reader.bool("ipv4")
        _ = try reader.bool("ipv6")
        _ = try reader.bool("numeric")
        _ = try reader.unsigned("to")
        let address: ListenAddress
        if let path = try reader.string("path") {
            guard path.utf8.count < 108 else { throw OptionError("\(context): socket path longer than 107 bytes") }
            address = .unix(path: path)
        } else if let port = try reader.string("port") {
            guard let number = Int(port), (0...65535).contains(number) else {
                throw OptionError("\(context): parameter 'port' expects a port number from 0 to 65535, got '\(port)'")
            }
            address = .inet(host: try reader.string("host") ?? "127.0.0.1", port: port)
        } else if let fd = try reader.string("fd") {
            guard let number = Int32(fd), number >= 0 else { throw OptionError("\(context): parameter 'fd' expects a descriptor number") }
            address = .fd(number)
        } else {
            throw OptionError("\(context): give path=PATH (unix) or host=HOST,port=PORT (TCP)")
        }
        try reader.finish()
        return ChardevSpec(id: id, address: address)
    }

    /// Reads one `--monitor` object: `chardev=ID[,mode=control][,pretty=on]`.
    public static func parseMonitor(_ value: OptionValue) throws(OptionError) -> MonitorSpec {
        let reader = try OptionReader(value, context: "--monitor")
        let chardev = try reader.requiredString("chardev")
        if let mode = try reader.choice("mode", ["control", "readline"]), mode != "control" {
            throw OptionError("--monitor: mode=readline (the human monitor) is not supported; use mode=control")
        }
        let pretty = try reader.bool("pretty") ?? false
        _ = try reader.string("id")
        try reader.finish()
        return MonitorSpec(chardev: chardev, pretty: pretty)
    }

    /// Reads one `--export` object.
    public static func parseExport(_ value: OptionValue, syntax: OptionSyntax = .commandLine) throws(OptionError) -> ExportSpec {
        let reader = try OptionReader(value, context: "--export", syntax: syntax)
        // Only NBD exports exist; a missing type is reported as missing, another as not accepted.
        if try reader.choice("type", ["nbd"]) == nil { _ = try reader.requiredString("type") }
        let id = try reader.requiredString("id")
        let context = "--export '\(id)'"
        let nodeName = try reader.requiredString("node-name")
        let name = try reader.string("name") ?? nodeName
        let description = try reader.string("description")
        let writable = try reader.bool("writable") ?? false
        let resizable = try reader.bool("x-resize") ?? false
        _ = try reader.bool("writethrough")
        _ = try reader.string("iothread")
        _ = try reader.bool("fixed-iothread")
        var bitmaps: [ExportBitmap] = []
        switch reader.value("bitmaps") {
        case .array(let list)?:
            for (index, item) in list.enumerated() {
                switch item {
                case .string(let name):
                    bitmaps.append(ExportBitmap(node: nil, name: name))
                case .object:
                    let entry = try OptionReader(item, context: "\(context) bitmaps.\(index)", syntax: syntax)
                    bitmaps.append(ExportBitmap(node: try entry.requiredString("node"), name: try entry.requiredString("name")))
                    try entry.finish()
                default:
                    throw OptionError(syntax == .qmp ? "Invalid parameter type for 'bitmaps[\(index)]', expected: BlockDirtyBitmapOrStr"
                                                     : "\(context): 'bitmaps' must be a list of bitmap names or node/name pairs")
                }
            }
        case nil:
            break
        case .some where syntax == .qmp:
            throw OptionError("Invalid parameter type for 'bitmaps', expected: array")
        case .some:
            throw OptionError("\(context): 'bitmaps' must be a list of bitmap names")
        }
        let allocationDepth = try reader.bool("allocation-depth") ?? false
        try reader.finish()
        // QMP checks the length where QEMU does, after the node and the server (Daemon.addExport).
        guard syntax == .qmp || name.utf8.count <= 4096 else { throw OptionError("\(context): export name longer than 4096 bytes") }
        return ExportSpec(id: id, nodeName: nodeName, name: name, description: description, writable: writable,
                          resizable: resizable, allocationDepth: allocationDepth, bitmaps: bitmaps)
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
    /// `--chardev` values.
    public var chardevs: [String] = []
    /// `--monitor` values.
    public var monitors: [String] = []
    /// `--object` values.
    public var objects: [String] = []
    /// `--config FILE`.
    public var configPath: String?
    /// `--log-level`, when given on the command line.
    public var logLevel: String?
    /// `--pidfile`.
    public var pidfile: String?
    /// `--daemonize`.
    public var daemonize = false
    /// `--metrics` values.
    public var metrics: [String] = []

    /// Creates empty options.
    public init() {}

    /// The configuration: the config file's settings first, then the command line's.
    public func configuration() throws(OptionError) -> DaemonConfiguration {
        let file = try configPath.map { path throws(OptionError) in try ConfigFile.load(path) } ?? ConfigFile()
        func texts(_ values: [String]) -> [OptionText] { values.map { OptionText($0) } }
        var configuration = try DaemonConfiguration(
            blockdevs: file.blockdevs + texts(blockdevs), servers: file.servers + texts(servers), exports: file.exports + texts(exports),
            chardevs: file.chardevs + texts(chardevs), monitors: file.monitors + texts(monitors),
            objects: file.objects + texts(objects))
        configuration.pidfile = pidfile ?? file.pidfile
        configuration.daemonize = daemonize
        configuration.logLevel = file.logLevel
        for item in file.metrics + texts(metrics) {
            configuration.metrics = try item.located { () throws(OptionError) in
                do throws(OptionError) {
                    return try DaemonConfiguration.parseMetrics(try KeyValueParser.parse(item.text, impliedKey: nil))
                } catch {
                    throw error.message.hasPrefix("--metrics") ? error : OptionError("--metrics: \(error.message)")
                }
            }
        }
        return configuration
    }
}
