#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock

/// The settings of a config file (`blockd --config FILE`): one command-line option per line, without
/// its leading dashes, then white space, then the value exactly as on the command line.
///
/// ```
/// # /etc/blockd/disk0.conf
/// blockdev driver=file,node-name=file0,filename=/var/lib/blockd/disk0.img
/// blockdev driver=raw,node-name=disk0,file=file0
/// nbd-server addr.type=unix,addr.path=/run/blockd/disk0.sock
/// export type=nbd,id=disk0,node-name=disk0,writable=on
/// ```
public struct ConfigFile: Sendable, Equatable {
    /// `blockdev` lines.
    public var blockdevs: [OptionText] = []
    /// `nbd-server` lines.
    public var servers: [OptionText] = []
    /// `export` lines.
    public var exports: [OptionText] = []
    /// `chardev` lines.
    public var chardevs: [OptionText] = []
    /// `monitor` lines.
    public var monitors: [OptionText] = []
    /// `object` lines (throttle groups).
    public var objects: [OptionText] = []
    /// `metrics` lines (the Prometheus endpoint; the last one wins).
    public var metrics: [OptionText] = []
    /// `pidfile`.
    public var pidfile: String?
    /// `log-level`.
    public var logLevel: String?

    /// Creates an empty file's settings.
    public init() {}

    /// Parses the text of a config file; errors name the file and line.
    public init(text: String, path: String) throws(OptionError) {
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.drop { $0 == " " || $0 == "\t" }
            guard !line.isEmpty, line.first != "#" else { continue }
            let key = String(line.prefix { $0 != " " && $0 != "\t" })
            var value = String(line.dropFirst(key.count).drop { $0 == " " || $0 == "\t" })
            while value.last == " " || value.last == "\t" || value.last == "\r" { value.removeLast() }
            let option = key.hasPrefix("--") ? String(key.dropFirst(2)) : key
            let place = "\(path):\(index + 1)"
            guard !value.isEmpty else { throw OptionError("\(place): '\(option)' needs a value") }
            let text = OptionText(value, location: place)
            switch option {
            case "blockdev": blockdevs.append(text)
            case "nbd-server": servers.append(text)
            case "export": exports.append(text)
            case "chardev": chardevs.append(text)
            case "monitor": monitors.append(text)
            case "object": objects.append(text)
            case "metrics": metrics.append(text)
            case "pidfile": pidfile = value
            case "log-level": logLevel = value
            default:
                throw OptionError("\(place): unknown option '\(option)' (expected blockdev, nbd-server, export, chardev, monitor, object, metrics, pidfile or log-level)")
            }
        }
    }

    /// Reads and parses a file.
    public static func load(_ path: String) throws(OptionError) -> ConfigFile {
        guard let file = fopen(path, "r") else {
            throw OptionError("--config: cannot read '\(path)': \(String(cString: strerror(errno)))")
        }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fread(&chunk, 1, chunk.count, file)
            if count == 0 { break }
            bytes.append(contentsOf: chunk[0..<count])
            guard bytes.count <= 16 << 20 else { throw OptionError("--config: '\(path)' is larger than 16 MiB") }
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw OptionError("--config: '\(path)' is not UTF-8 text")
        }
        return try ConfigFile(text: text, path: path)
    }
}
