#if canImport(Glibc)
import Glibc
#endif
import CBlockShims
import LogOptionsClock
import Sockets
import Synchronization

/// The limits that keep a slow or hostile scraper from costing more than one slot.
public struct MetricsHTTPLimits: Sendable {
    /// The most bytes of request head read; past it the request is answered 431 and closed.
    public var maxRequestBytes = 8192
    /// Seconds a client has to send its whole request head (against slowloris).
    public var headerTimeout = 5.0
    /// Seconds a client has to read its whole answer.
    public var sendTimeout = 10.0
    /// Clients served at once; the next ones are answered 503 and closed.
    public var maxClients = 32

    /// The default limits.
    public init() {}
}

/// A tiny HTTP/1.x server for `GET /metrics`: one thread polls the listening socket and every
/// client with non-blocking sockets, so no client can hold it up; each answer closes its connection.
/// Anything but `GET` is answered 405, any other path 404.
public final class MetricsHTTPServer: Sendable {
    /// Where it listens.
    public let address: ListenAddress
    /// The TCP port bound, for inet addresses.
    public let boundPort: Int?
    private let listenFD: Int32
    private let wakeRead: Int32
    private let wakeWrite: Int32
    private let limits: MetricsHTTPLimits
    private let render: @Sendable () -> [UInt8]
    private let stopped = Atomic<Bool>(false)
    private let answered = Atomic<Int>(0)

    /// Binds `address`; `render` produces the body of each `GET /metrics` (exposition format text).
    public init(address: ListenAddress, limits: MetricsHTTPLimits = MetricsHTTPLimits(), render: @escaping @Sendable () -> [UInt8]) throws(OptionError) {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw OptionError("pipe: \(String(cString: strerror(errno)))") }
        for end in fds { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        do {
            listenFD = try Listener.boundSocket(address)
        } catch {
            close(fds[0])
            close(fds[1])
            throw error
        }
        _ = fcntl(listenFD, F_SETFL, fcntl(listenFD, F_GETFL) | O_NONBLOCK)
        wakeRead = fds[0]
        wakeWrite = fds[1]
        self.address = address
        self.limits = limits
        self.render = render
        if case .inet = address { boundPort = MetricsHTTPServer.port(of: listenFD) } else { boundPort = nil }
    }

    /// `GET /metrics` requests answered so far.
    public var scrapes: Int { answered.load(ordering: .relaxed) }

    /// Starts the serving thread.
    public func start() {
        spawnThread { [self] in serve() }
    }

    /// Stops serving: the thread closes every client and the listening socket (a unix socket's
    /// file is removed). Does not wait for the thread.
    public func stop() {
        guard !stopped.exchange(true, ordering: .relaxed) else { return }
        var byte: UInt8 = 1
        _ = write(wakeWrite, &byte, 1)
        if case .unix(let path) = address { unlink(path) }
    }

    deinit {
        close(wakeWrite)
    }

    /// One client's state: the request head read so far, then the answer left to send.
    private struct Client {
        var fd: Int32
        var received: [UInt8] = []
        var output: [UInt8] = []
        var sent = 0
        var deadline: Double
        var writing: Bool { !output.isEmpty }
    }

    private func serve() {
        var clients: [Client] = []
        defer {
            for client in clients { close(client.fd) }
            close(listenFD)
            close(wakeRead)
        }
        while !stopped.load(ordering: .relaxed) {
            var fds = [pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0), pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
            for client in clients {
                fds.append(pollfd(fd: client.fd, events: Int16(client.writing ? POLLOUT : POLLIN), revents: 0))
            }
            let now = MonotonicClock.seconds()
            let nearest = clients.map(\.deadline).min().map { max(0, $0 - now) } ?? 1
            let result = poll(&fds, nfds_t(fds.count), Int32(min(nearest, 1) * 1000) + 1)
            if result < 0 && errno != EINTR { Log.error("metrics: poll: \(String(cString: strerror(errno)))"); return }
            if fds[1].revents != 0 { return }
            let after = MonotonicClock.seconds()
            var keep: [Client] = []
            for (index, var client) in clients.enumerated() {
                let events = fds[index + 2].revents
                var open = true
                if events & Int16(POLLIN | POLLHUP | POLLERR) != 0 && !client.writing { open = receive(&client) }
                if open && client.writing && events & Int16(POLLOUT | POLLERR | POLLHUP) != 0 { open = send(&client) }
                if open && after > client.deadline { open = false }
                if open { keep.append(client) } else { close(client.fd) }
            }
            clients = keep
            if fds[0].revents & Int16(POLLIN) != 0 { accept(into: &clients) }
        }
    }

    /// Accepts every waiting connection; past the client limit they are answered 503 and closed.
    private func accept(into clients: inout [Client]) {
        while true {
            var storage = sockaddr_storage()
            var size = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let fd = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { blk_accept(listenFD, $0, &size) }
            }
            guard fd >= 0 else { return }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            guard clients.count < limits.maxClients else {
                let answer = MetricsHTTPServer.response(status: "503 Service Unavailable", body: Array("too many scrapers\n".utf8))
                _ = answer.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                close(fd)
                continue
            }
            clients.append(Client(fd: fd, deadline: MonotonicClock.seconds() + limits.headerTimeout))
        }
    }

    /// Reads what the client sent; queues the answer once the head is complete. False: close it.
    private func receive(_ client: inout Client) -> Bool {
        var chunk = [UInt8](repeating: 0, count: 4096)
        let count = chunk.withUnsafeMutableBytes { recv(client.fd, $0.baseAddress, $0.count, 0) }
        if count < 0 { return errno == EAGAIN || errno == EINTR }
        if count == 0 { return false }
        client.received.append(contentsOf: chunk[0..<count])
        let answer: [UInt8]
        switch HTTPRequestHead.parse(client.received) {
        case .incomplete:
            guard client.received.count > limits.maxRequestBytes else { return true }
            answer = MetricsHTTPServer.response(status: "431 Request Header Fields Too Large", body: Array("request too large\n".utf8))
        case .malformed:
            answer = MetricsHTTPServer.response(status: "400 Bad Request", body: Array("bad request\n".utf8))
        case .head(let head) where head.method != "GET":
            answer = MetricsHTTPServer.response(status: "405 Method Not Allowed", body: Array("only GET\n".utf8), extra: "Allow: GET\r\n")
        case .head(let head) where head.path != "/metrics":
            answer = MetricsHTTPServer.response(status: "404 Not Found", body: Array("not found; try /metrics\n".utf8))
        case .head:
            answer = MetricsHTTPServer.response(
                status: "200 OK", body: render(), contentType: "text/plain; version=0.0.4; charset=utf-8")
            answered.add(1, ordering: .relaxed)
        }
        client.received = []
        client.output = answer
        client.deadline = MonotonicClock.seconds() + limits.sendTimeout
        return send(&client)
    }

    /// Sends what the socket takes of the answer. False: done or failed (close it).
    private func send(_ client: inout Client) -> Bool {
        while client.sent < client.output.count {
            let sent = client.output.withUnsafeBytes { bytes in
                Glibc.send(client.fd, bytes.baseAddress! + client.sent, bytes.count - client.sent, Int32(MSG_NOSIGNAL))
            }
            if sent < 0 { return errno == EAGAIN || errno == EINTR }
            client.sent += sent
        }
        Glibc.shutdown(client.fd, Int32(SHUT_WR))
        return false
    }

    /// An HTTP/1.1 answer that closes the connection.
    static func response(status: String, body: [UInt8], contentType: String = "text/plain; charset=utf-8", extra: String = "") -> [UInt8] {
        let head = "HTTP/1.1 \(status)\r\nContent-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n\(extra)Connection: close\r\n\r\n"
        return Array(head.utf8) + body
    }

    private static func port(of fd: Int32) -> Int? {
        var storage = sockaddr_storage()
        var size = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &size) == 0 }
        }
        guard ok else { return nil }
        switch Int32(storage.ss_family) {
        case AF_INET: return withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) } }
        case AF_INET6: return withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin6_port)) } }
        default: return nil
        }
    }
}
