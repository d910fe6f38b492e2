#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import Exports
import Sockets
import LogOptionsClock

/// Talks to the service manager over `NOTIFY_SOCKET` (sd_notify(3)): readiness, status, watchdog.
public final class SystemdNotifier: Sendable {
    private let fd: Int32
    private let address: [UInt8]
    /// The watchdog period requested by `WatchdogSec=` (from `WATCHDOG_USEC`), in microseconds.
    public let watchdogMicroseconds: UInt64?

    /// Connects to `NOTIFY_SOCKET`; nil when the process was not started with one.
    public init?() {
        guard let path = getenv("NOTIFY_SOCKET").map({ String(cString: $0) }), !path.isEmpty,
              path.hasPrefix("/") || path.hasPrefix("@"), path.utf8.count < 108 else { return nil }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        self.fd = fd
        var bytes = Array(path.utf8)
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }  // an abstract socket
        self.address = bytes
        let pidMatches = getenv("WATCHDOG_PID").map { pid_t(String(cString: $0)) == getpid() } ?? true
        if pidMatches, let text = getenv("WATCHDOG_USEC").map({ String(cString: $0) }), let usec = UInt64(text), usec > 0 {
            watchdogMicroseconds = usec
        } else {
            watchdogMicroseconds = nil
        }
    }

    deinit { close(fd) }

    /// Sends one notification, such as "READY=1" or "STATUS=...".
    public func notify(_ state: String) {
        var target = sockaddr_un()
        target.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &target.sun_path) { raw in raw.copyBytes(from: address) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + address.count)
        var message = Array(state.utf8)
        let sent = withUnsafePointer(to: &target) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, &message, message.count, Int32(MSG_NOSIGNAL), $0, length) }
        }
        if sent < 0 { Log.debug("sd_notify '\(state)' failed: \(String(cString: strerror(errno)))") }
    }

    /// Pings the watchdog at half the requested period until the process ends.
    public func startWatchdog() {
        guard let period = watchdogMicroseconds else { return }
        let interval = useconds_t(clamping: max(period / 2, 1000))
        spawnThread { [self] in
            while true {
                notify("WATCHDOG=1")
                usleep(interval)
            }
        }
    }
}
