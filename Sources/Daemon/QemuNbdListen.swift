#if canImport(Glibc)
import Glibc
#endif
import Sockets

/// The listening socket of `blockd-nbd`, made before the image is opened (qemu-nbd's order) and
/// failing with qemu-nbd's messages; the daemon then serves on the descriptor.
enum QemuNbdListen {
    /// A bound, listening socket for `address` (unix or inet).
    static func bind(_ address: ListenAddress) throws(QemuNbdError) -> Int32 {
        switch address {
        case .unix(let path):
            return try unix(path)
        case .inet(let host, let port):
            return try inet(host, port)
        default:
            throw QemuNbdError("unsupported listen address \(address)")
        }
    }

    private static func unix(_ path: String) throws(QemuNbdError) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw QemuNbdError("Failed to create Unix socket: \(String(cString: strerror(errno)))") }
        guard path.utf8.count < 108 else {
            close(fd)
            throw QemuNbdError("UNIX socket path '\(path)' is too long")
        }
        if Glibc.unlink(path) < 0 && errno != ENOENT {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw QemuNbdError("Failed to unlink socket \(path): \(reason)")
        }
        guard withUnixAddress(path, { Glibc.bind(fd, $0, $1) }) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw QemuNbdError("Failed to bind socket to \(path): \(reason)")
        }
        guard listen(fd, SOMAXCONN) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw QemuNbdError("Failed to listen on socket: \(reason)")
        }
        return fd
    }

    private static func inet(_ host: String, _ port: String) throws(QemuNbdError) -> Int32 {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE
        var list: UnsafeMutablePointer<addrinfo>?
        let bare = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        let status = getaddrinfo(bare.isEmpty ? nil : bare, port, &hints, &list)
        guard status == 0, let first = list else {
            throw QemuNbdError("address resolution failed for \(host):\(port): \(String(cString: gai_strerror(status)))")
        }
        defer { freeaddrinfo(list) }
        var reason = "no usable address"
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let info = entry {
            entry = info.pointee.ai_next
            let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), info.pointee.ai_protocol)
            guard fd >= 0 else { continue }
            var on: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
            if info.pointee.ai_family == AF_INET6 {
                setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &on, socklen_t(MemoryLayout<Int32>.size))
            }
            if Glibc.bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0, listen(fd, SOMAXCONN) == 0 {
                return fd
            }
            reason = String(cString: strerror(errno))
            close(fd)
        }
        throw QemuNbdError("Failed to find an available port: \(reason)")
    }
}
