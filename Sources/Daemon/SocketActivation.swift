#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import Exports
import Sockets
import LogOptionsClock

/// Listening sockets passed by systemd (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`; sd_listen_fds(3)).
public struct SocketActivation: Sendable {
    /// The first passed descriptor, by convention.
    public static let firstDescriptor: Int32 = 3
    /// The passed descriptors with their names ("unknown" when unnamed).
    public let sockets: [(fd: Int32, name: String)]

    /// Reads and clears the environment; nil when nothing was passed to this process.
    public static func fromEnvironment() -> SocketActivation? {
        guard let pidText = getenv("LISTEN_PID").map({ String(cString: $0) }), Int32(pidText) == getpid(),
              let countText = getenv("LISTEN_FDS").map({ String(cString: $0) }), let count = Int32(countText), count > 0
        else { return nil }
        let names = getenv("LISTEN_FDNAMES").map { String(cString: $0).split(separator: ":", omittingEmptySubsequences: false).map(String.init) } ?? []
        unsetenv("LISTEN_PID")
        unsetenv("LISTEN_FDS")
        unsetenv("LISTEN_FDNAMES")
        var sockets: [(fd: Int32, name: String)] = []
        for index in 0..<count {
            let fd = firstDescriptor + index
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            sockets.append((fd, Int(index) < names.count ? names[Int(index)] : "unknown"))
        }
        return SocketActivation(sockets: sockets)
    }

    /// Turns `addr.type=fd,addr.str=NAME` into the passed descriptor of that name.
    public func resolve(_ address: ListenAddress) throws(OptionError) -> ListenAddress {
        guard case .fdName(let name) = address else { return address }
        guard let socket = sockets.first(where: { $0.name == name }) else {
            throw OptionError("--nbd-server: no socket named '\(name)' was passed (have: \(sockets.map(\.name).joined(separator: ", ")))")
        }
        return .fd(socket.fd)
    }
}
