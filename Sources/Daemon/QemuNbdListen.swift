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
        do throws(InetListenFailure) {
            // qemu-nbd resolves service names too, and listens with the system's largest backlog.
            return try Listener.listeningInetSocket(host: host, port: port, numericPort: false, backlog: SOMAXCONN)
        } catch {
            switch error {
            case .resolve(let reason): throw QemuNbdError("address resolution failed for \(host):\(port): \(reason)")
            case .bind(let reason): throw QemuNbdError("Failed to find an available port: \(reason)")
            }
        }
    }
}
