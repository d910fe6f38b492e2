#if canImport(Glibc)
import Glibc
#endif

/// A client at the other end of a socket pair: sends `input`, half-closes, and reads every reply
/// until the server closes, reading and writing together so neither side can block the other.
public enum SocketPeer {
    /// Runs `server` on one end of a fresh socket pair while a thread plays the client on the other;
    /// returns how many bytes the server sent. The server's descriptor is closed afterwards.
    @discardableResult
    public static func exchange(_ input: [UInt8], server: (Int32) -> Void) -> Int {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            fatalError("socketpair: \(String(cString: strerror(errno)))")
        }
        let client = ClientThread(fd: pair[1], input: input)
        client.start()
        server(pair[0])
        close(pair[0])
        let received = client.join()
        close(pair[1])
        return received
    }
}

/// The client side of `SocketPeer.exchange`, on a joinable thread.
private final class ClientThread: @unchecked Sendable {
    let fd: Int32
    let input: [UInt8]
    var received = 0
    var thread = pthread_t()

    init(fd: Int32, input: [UInt8]) {
        self.fd = fd
        self.input = input
    }

    func start() {
        let box = Unmanaged.passRetained(self).toOpaque()
        let result = pthread_create(&thread, nil, { argument in
            let me = Unmanaged<ClientThread>.fromOpaque(argument!).takeRetainedValue()
            me.run()
            return nil
        }, box)
        guard result == 0 else { fatalError("pthread_create: \(String(cString: strerror(result)))") }
    }

    func join() -> Int {
        pthread_join(thread, nil)
        return received
    }

    private func run() {
        var sent = 0
        var open = true
        if input.isEmpty { shutdown(fd, Int32(SHUT_WR)) }
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while open {
            var poller = pollfd(fd: fd, events: Int16(POLLIN) | (sent < input.count ? Int16(POLLOUT) : 0), revents: 0)
            guard poll(&poller, 1, -1) > 0 else {
                if errno == EINTR { continue }
                return
            }
            if poller.revents & Int16(POLLOUT) != 0 && sent < input.count {
                let count = input.withUnsafeBytes { raw in
                    send(fd, raw.baseAddress! + sent, input.count - sent, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
                }
                if count > 0 {
                    sent += count
                    if sent == input.count { shutdown(fd, Int32(SHUT_WR)) }
                } else if count < 0 && errno != EAGAIN && errno != EINTR {
                    sent = input.count  // the server is gone; keep reading what it sent
                }
            }
            if poller.revents & (Int16(POLLIN) | Int16(POLLHUP) | Int16(POLLERR)) != 0 {
                let count = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
                if count > 0 {
                    received += count
                } else if count == 0 || (errno != EAGAIN && errno != EINTR) {
                    open = false
                }
            }
        }
    }
}
