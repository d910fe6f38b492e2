/// qemu-nbd's command line, read with qemu-nbd's rules and checks (in qemu-nbd's order, with its
/// messages), for `blockd-nbd`.
public struct QemuNbdOptions: Sendable, Equatable {
    /// What the invocation asks for.
    public enum Action: Sendable, Equatable {
        /// `-h`: print the help text.
        case help
        /// `-V`: print the version.
        case version
        /// `-L`: list another server's exports.
        case list
        /// `-d DEV`: disconnect a kernel nbd device.
        case disconnect(String)
        /// Serve FILE (and with `-c`, attach it to a kernel device).
        case serve
    }

    /// How the image's data is cached (`--cache`, `-n`).
    public enum CacheMode: String, Sendable, Equatable {
        case none, writeback, writethrough, directsync, unsafe

        /// O_DIRECT on the file.
        public var direct: Bool { self == .none || self == .directsync }
        /// Flushes are ignored.
        public var noFlush: Bool { self == .unsafe }
        /// Every write is flushed before it is acknowledged.
        public var writethrough: Bool { self == .writethrough || self == .directsync }
    }

    /// What was asked for.
    public var action: Action = .serve
    /// FILE (the image, or with `--image-opts` its options).
    public var file: String?
    /// `-r` (also implied by `-l`).
    public var readOnly = false
    /// `-f`.
    public var format: String?
    /// `-x` (nil: the empty name).
    public var exportName: String?
    /// `-D`.
    public var description: String?
    /// `-k`.
    public var socketPath: String?
    /// `-b` (default 0.0.0.0).
    public var bind: String?
    /// `-p` (default 10809).
    public var port: String?
    /// `-t`.
    public var persistent = false
    /// `-e`: clients served at once (0: no limit).
    public var shared = 1
    /// `-o`.
    public var offset: UInt64 = 0
    /// `-A`.
    public var allocationDepth = false
    /// `-B`, in the order given.
    public var bitmaps: [String] = []
    /// `-s`.
    public var snapshot = false
    /// `-l`: an internal snapshot by id or name.
    public var loadSnapshot: String?
    /// `-l snapshot.id=...,snapshot.name=...`.
    public var loadSnapshotID: String?
    /// `-l snapshot.name=...`.
    public var loadSnapshotName: String?
    /// `--cache` / `-n`.
    public var cache: CacheMode?
    /// `--aio`.
    public var aio: String?
    /// `--discard` (true: unmap).
    public var discardUnmap = false
    /// Whether `--discard` was given.
    public var discardGiven = false
    /// `--detect-zeroes`.
    public var detectZeroes = "off"
    /// `--object`, as given.
    public var objects: [String] = []
    /// `--tls-creds`.
    public var tlsCreds: String?
    /// `--tls-authz`.
    public var tlsAuthz: String?
    /// `--tls-hostname`.
    public var tlsHostname: String?
    /// `--image-opts`.
    public var imageOpts = false
    /// `--fork`.
    public var fork = false
    /// `--pid-file`.
    public var pidFile: String?
    /// `-c`.
    public var device: String?
    /// `-v`.
    public var verbose = false
    /// `-T`, accepted and ignored (blockd has no trace events).
    public var trace: [String] = []
    /// `--selinux-label`.
    public var selinuxLabel: String?

    /// NBD's limit on names and descriptions.
    public static let maxStringSize = 4096
    /// qemu-nbd's default TCP port.
    public static let defaultPort = "10809"

    /// Options with nothing set.
    public init() {}

    static let parser = GetoptLong(shortSpec: "hVb:o:p:rsnc:dvk:e:f:tl:x:T:D:AB:L", longs: [
        .init("help", value: false, code: "h"), .init("version", value: false, code: "V"),
        .init("bind", value: true, code: "b"), .init("port", value: true, code: "p"),
        .init("socket", value: true, code: "k"), .init("offset", value: true, code: "o"),
        .init("read-only", value: false, code: "r"), .init("allocation-depth", value: false, code: "A"),
        .init("bitmap", value: true, code: "B"), .init("connect", value: true, code: "c"),
        .init("disconnect", value: false, code: "d"), .init("list", value: false, code: "L"),
        .init("snapshot", value: false, code: "s"), .init("load-snapshot", value: true, code: "l"),
        .init("nocache", value: false, code: "n"), .init("cache", value: true), .init("aio", value: true),
        .init("discard", value: true), .init("detect-zeroes", value: true),
        .init("shared", value: true, code: "e"), .init("format", value: true, code: "f"),
        .init("persistent", value: false, code: "t"), .init("verbose", value: false, code: "v"),
        .init("object", value: true), .init("export-name", value: true, code: "x"),
        .init("description", value: true, code: "D"), .init("tls-creds", value: true),
        .init("tls-hostname", value: true), .init("tls-authz", value: true), .init("image-opts", value: false),
        .init("trace", value: true, code: "T"), .init("fork", value: false), .init("pid-file", value: true),
        .init("selinux-label", value: true),
    ])

    /// Reads a command line (without the program name), checking it as qemu-nbd does before it
    /// touches any file or socket.
    public static func parse(_ arguments: [String], environment: [String: String] = [:]) throws(QemuNbdError) -> QemuNbdOptions {
        var options = QemuNbdOptions()
        let (items, operands) = parser.parse(arguments)
        var seenCache = false
        var seenAio = false
        var disconnect = false
        for item in items {
            switch item {
            case .error(let message):
                throw QemuNbdError(message, layout: .getopt)
            case .option(let code, let value):
                if code == "h" { options.action = .help; return options }
                if code == "V" { options.action = .version; return options }
                try options.apply(code, value ?? "", seenCache: &seenCache, seenAio: &seenAio, disconnect: &disconnect)
            }
        }
        if options.action == .list {
            if !operands.isEmpty { throw QemuNbdError("List mode is incompatible with a file name") }
            if options.exportName != nil || options.description != nil || options.offset != 0 || options.device != nil || disconnect
                || options.format != nil || options.loadSnapshot != nil || options.loadSnapshotID != nil || options.loadSnapshotName != nil
                || !options.bitmaps.isEmpty || options.allocationDepth || seenAio || options.discardGiven || seenCache {
                throw QemuNbdError("List mode is incompatible with per-device settings")
            }
            if options.fork { throw QemuNbdError("List mode is incompatible with forking") }
        } else if operands.count != 1 {
            throw QemuNbdError("Invalid number of arguments", layout: .usage)
        } else {
            options.file = operands[0]
            if options.exportName == nil { options.exportName = "" }
        }
        if options.tlsCreds != nil {
            if options.device != nil { throw QemuNbdError("TLS is not supported with a host device") }
            if options.tlsAuthz != nil && options.action == .list {
                throw QemuNbdError("TLS authorization is incompatible with export list")
            }
            if options.tlsHostname != nil && options.action != .list {
                throw QemuNbdError("TLS hostname is only supported with export list")
            }
        } else {
            if options.tlsAuthz != nil { throw QemuNbdError("--tls-authz is not permitted without --tls-creds") }
            if options.tlsHostname != nil { throw QemuNbdError("--tls-hostname is not permitted without --tls-creds") }
        }
        if let creds = options.tlsCreds {
            try QemuNbdObjects.checkTLSCreds(creds, in: options.objects, server: options.action != .list)
        }
        if options.selinuxLabel != nil && options.socketPath == nil && options.device == nil {
            throw QemuNbdError("--selinux-label is not permitted without --socket")
        }
        if disconnect && options.action != .list { options.action = .disconnect(options.file ?? "") }
        return options
    }

    // One option, in the order given, with qemu-nbd's immediate checks.
    private mutating func apply(
        _ code: String, _ value: String, seenCache: inout Bool, seenAio: inout Bool, disconnect: inout Bool
    ) throws(QemuNbdError) {
        switch code {
        case "s": snapshot = true
        case "n", "cache":
            if seenCache { throw QemuNbdError("-n and --cache can only be specified once") }
            seenCache = true
            let mode = code == "n" ? "none" : value
            guard let parsed = QemuNbdOptions.cacheMode(mode) else { throw QemuNbdError("Invalid cache mode `\(mode)'") }
            cache = parsed
        case "aio":
            if seenAio { throw QemuNbdError("--aio can only be specified once") }
            seenAio = true
            guard ["native", "io_uring", "threads"].contains(value) else { throw QemuNbdError("Invalid aio mode '\(value)'") }
            aio = value
        case "discard":
            if discardGiven { throw QemuNbdError("--discard can only be specified once") }
            discardGiven = true
            switch value {
            case "off", "ignore": discardUnmap = false
            case "on", "unmap": discardUnmap = true
            default: throw QemuNbdError("Invalid discard mode `\(value)'")
            }
        case "detect-zeroes":
            guard ["off", "on", "unmap"].contains(value) else {
                throw QemuNbdError("Failed to parse detect_zeroes mode: invalid parameter value: \(value)")
            }
            if value == "unmap" && !discardUnmap {
                throw QemuNbdError("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap")
            }
            detectZeroes = value
        case "b": bind = value
        case "p": port = value
        case "o":
            guard let number = QemuNbdOptions.cUnsigned(value) else { throw QemuNbdError("Invalid offset '\(value)'") }
            offset = number
        case "l":
            if value.hasPrefix("snapshot.") {
                for pair in value.split(separator: ",", omittingEmptySubsequences: false) {
                    let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                    let key = String(parts[0])
                    let setting = parts.count > 1 ? String(parts[1]) : "on"
                    switch key {
                    case "snapshot.id": loadSnapshotID = setting
                    case "snapshot.name": loadSnapshotName = setting
                    default:
                        throw QemuNbdError("Invalid parameter '\(key)'\n\(QemuNbdOptions.programMarker)Failed in parsing snapshot param `\(value)'")
                    }
                }
            } else {
                loadSnapshot = value
            }
            readOnly = true
        case "r": readOnly = true
        case "A": allocationDepth = true
        case "B": bitmaps.insert(value, at: 0)
        case "k":
            guard value.hasPrefix("/") else { throw QemuNbdError("socket path must be absolute") }
            socketPath = value
        case "d": disconnect = true
        case "c": device = value
        case "e":
            guard let number = QemuNbdOptions.cInteger(value), number >= 0, number <= Int(Int32.max) else {
                throw QemuNbdError("Invalid shared device number '\(value)'")
            }
            shared = number
        case "f": format = value
        case "t": persistent = true
        case "x":
            guard value.utf8.count <= QemuNbdOptions.maxStringSize else { throw QemuNbdError("export name '\(value)' too long") }
            exportName = value
        case "D":
            guard value.utf8.count <= QemuNbdOptions.maxStringSize else {
                throw QemuNbdError("export description '\(value)' too long")
            }
            description = value
        case "v": verbose = true
        case "object":
            try QemuNbdObjects.check(value)
            objects.append(value)
        case "tls-creds": tlsCreds = value
        case "tls-hostname": tlsHostname = value
        case "tls-authz": tlsAuthz = value
        case "image-opts": imageOpts = true
        case "T": trace.append(value)
        case "fork": fork = true
        case "L": action = .list
        case "pid-file": pidFile = value
        case "selinux-label": selinuxLabel = value
        default: break
        }
    }

    /// Where a second line of a two-line message starts again with the program name (see `QemuNbdError.text`).
    public static let programMarker = "\u{1}"

    /// `bdrv_parse_cache_mode`'s names.
    static func cacheMode(_ name: String) -> CacheMode? {
        switch name {
        case "off", "none": return CacheMode.none
        case "writeback": return .writeback
        case "writethrough": return .writethrough
        case "directsync": return .directsync
        case "unsafe": return .unsafe
        default: return nil
        }
    }

    /// A C integer as `strtol(text, &end, 0)` reads it, the whole text used (leading blanks, sign, 0x, octal).
    static func cInteger(_ text: String) -> Int? {
        var body = text.drop { $0 == " " || $0 == "\t" || $0 == "\n" }
        var negative = false
        if let sign = body.first, sign == "-" || sign == "+" {
            negative = sign == "-"
            body = body.dropFirst()
        }
        guard let magnitude = unsignedBody(body) else { return nil }
        guard magnitude <= UInt64(Int.max) else { return nil }
        return negative ? -Int(magnitude) : Int(magnitude)
    }

    /// A C unsigned integer as `qemu_strtou64(text, NULL, 0, ...)` reads it (no sign).
    static func cUnsigned(_ text: String) -> UInt64? {
        unsignedBody(text.drop { $0 == " " || $0 == "\t" || $0 == "\n" })
    }

    private static func unsignedBody(_ body: Substring) -> UInt64? {
        guard !body.isEmpty else { return nil }
        if body.hasPrefix("0x") || body.hasPrefix("0X") { return UInt64(body.dropFirst(2), radix: 16) }
        if body.hasPrefix("0") && body.count > 1 { return UInt64(body.dropFirst(), radix: 8) }
        return UInt64(body, radix: 10)
    }
}
