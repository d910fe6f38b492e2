#if canImport(Glibc)
import Glibc
#endif

/// Who is at the other end of an accepted connection: what admission counts connections by, and
/// how log lines name the connection.
public struct Peer: Sendable, Hashable, CustomStringConvertible {
    /// The identity connections are counted by: the process (uid and pid, from `SO_PEERCRED`) for a
    /// unix socket, the address without the port for TCP.
    public let identity: String
    /// How log lines name this connection: host and port, or the socket and a counter.
    public let description: String

    /// A peer with an explicit identity and description.
    public init(identity: String, description: String) {
        self.identity = identity
        self.description = description
    }

    /// Identifies the peer of the connected socket `fd`, whose address `accept` returned.
    static func of(_ fd: Int32, address storage: sockaddr_storage, fallback: String) -> Peer {
        let family = Int32(storage.ss_family)
        if family == AF_UNIX {
            // struct ucred: pid_t pid, uid_t uid, gid_t gid.
            var credentials: (pid: Int32, uid: UInt32, gid: UInt32) = (0, 0, 0)
            var size = socklen_t(MemoryLayout<(Int32, UInt32, UInt32)>.size)
            if getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &size) == 0 {
                return Peer(identity: "uid \(credentials.uid) pid \(credentials.pid)",
                            description: "\(fallback) (pid \(credentials.pid))")
            }
            return Peer(identity: fallback, description: fallback)
        }
        guard let (host, port) = numericHost(storage) else { return Peer(identity: fallback, description: fallback) }
        let description = family == AF_INET6 ? "[\(host)]:\(port)" : "\(host):\(port)"
        return Peer(identity: host, description: description)
    }

    /// The numeric host and port of an IPv4 or IPv6 address.
    private static func numericHost(_ storage: sockaddr_storage) -> (String, String)? {
        var storage = storage
        let family = Int32(storage.ss_family)
        guard family == AF_INET || family == AF_INET6 else { return nil }
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        var service = [CChar](repeating: 0, count: Int(NI_MAXSERV))
        let length = socklen_t(family == AF_INET ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size)
        let result = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                getnameinfo($0, length, &host, socklen_t(host.count), &service, socklen_t(service.count), NI_NUMERICHOST | NI_NUMERICSERV)
            }
        }
        guard result == 0 else { return nil }
        func text(_ chars: [CChar]) -> String { String(decoding: chars.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        return (text(host), text(service))
    }
}
