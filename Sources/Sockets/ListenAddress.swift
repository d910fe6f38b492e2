#if canImport(Glibc)
import Glibc
#endif
import LogOptionsClock

/// Where the NBD server listens (SocketAddress in the schema).
public enum ListenAddress: Sendable, Equatable, CustomStringConvertible {
    /// A unix domain socket at a path.
    case unix(path: String)
    /// A TCP address: host name or literal (IPv4 or IPv6) and port.
    case inet(host: String, port: String)
    /// An already-listening descriptor (socket activation).
    case fd(Int32)
    /// A descriptor passed by systemd, by its `FileDescriptorName=` (resolved before listening).
    case fdName(String)

    public var description: String {
        switch self {
        case .unix(let path): return "unix:\(path)"
        case .inet(let host, let port): return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .fd(let fd): return "fd:\(fd)"
        case .fdName(let name): return "fd:\(name)"
        }
    }

    /// Reads `addr.type=unix,addr.path=...` / `addr.type=inet,addr.host=...,addr.port=...` / `addr.type=fd,addr.str=N`.
    public static func parse(_ reader: OptionReader) throws(OptionError) -> ListenAddress {
        let type = try reader.choice("type", ["unix", "inet", "fd"]) ?? "inet"
        let address: ListenAddress
        switch type {
        case "unix":
            let path = try reader.requiredString("path")
            guard path.utf8.count < 108 else { throw OptionError("\(reader.context): unix socket path '\(path)' is longer than 107 bytes") }
            _ = try reader.bool("abstract")
            _ = try reader.bool("tight")
            address = .unix(path: path)
        case "inet":
            let host = try reader.string("host") ?? "127.0.0.1"
            let port = try reader.string("port") ?? "10809"
            _ = try reader.bool("ipv4")
            _ = try reader.bool("ipv6")
            _ = try reader.bool("numeric")
            _ = try reader.unsigned("to")
            _ = try reader.bool("keep-alive")
            address = .inet(host: host, port: port)
        default:
            let name = try reader.requiredString("str")
            if let fd = Int32(name) {
                guard fd >= 0 else { throw OptionError("\(reader.context): addr.str='\(name)' is not a file descriptor") }
                address = .fd(fd)
            } else {
                address = .fdName(name)
            }
        }
        try reader.finish()
        return address
    }
}
