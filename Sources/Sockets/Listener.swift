#if canImport(Glibc)
import Glibc
#endif
import CBlockShims
import Synchronization
import LogOptionsClock

/// A listening socket and the thread that accepts on it.
public final class Listener: Sendable {
    /// Where it listens.
    public let address: ListenAddress
    /// The listening descriptor.
    public let fd: Int32
    private let closed = Atomic<Bool>(false)
    /// A pipe whose read end the accept thread polls with the socket: closing wakes it without
    /// touching the socket, which for an inherited one (socket activation) belongs to systemd too.
    private let wakeRead: Int32
    private let wakeWrite: Int32
    /// A pipe `resume()` writes to: wakes an accept thread that stopped accepting because its gate said so.
    private let resumeRead: Int32
    private let resumeWrite: Int32

    /// Binds and listens; fails with a message naming the address.
    public init(address: ListenAddress) throws(OptionError) {
        self.address = address
        var pipeFDs: [Int32] = [-1, -1]
        guard pipe(&pipeFDs) == 0 else { throw OptionError("pipe: \(String(cString: strerror(errno)))") }
        for end in pipeFDs { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        wakeRead = pipeFDs[0]
        wakeWrite = pipeFDs[1]
        var resumeFDs: [Int32] = [-1, -1]
        guard pipe(&resumeFDs) == 0 else {
            Glibc.close(wakeRead)
            Glibc.close(wakeWrite)
            throw OptionError("pipe: \(String(cString: strerror(errno)))")
        }
        for end in resumeFDs { _ = fcntl(end, F_SETFD, FD_CLOEXEC); _ = fcntl(end, F_SETFL, O_NONBLOCK) }
        resumeRead = resumeFDs[0]
        resumeWrite = resumeFDs[1]
        do {
            fd = try Listener.open(address)
        } catch {
            for end in [wakeRead, wakeWrite, resumeRead, resumeWrite] { Glibc.close(end) }
            throw error
        }
    }

    /// A bound, listening descriptor for `address` with no accept thread (the caller polls and closes it).
    public static func boundSocket(_ address: ListenAddress) throws(OptionError) -> Int32 { try open(address) }

    private static func open(_ address: ListenAddress) throws(OptionError) -> Int32 {
        switch address {
        case .unix(let path):
            return try bindUnix(path)
        case .inet(let host, let port):
            return try bindInet(host: host, port: port)
        case .fd(let fd):
            var type: Int32 = 0
            var size = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &size) == 0, type == Int32(SOCK_STREAM.rawValue) else {
                throw OptionError("file descriptor \(fd) is not a stream socket")
            }
            _ = listen(fd, 128)
            return fd
        case .fdName(let name):
            throw OptionError("no socket named '\(name)' was passed by the service manager")
        }
    }

    /// The TCP port actually bound (useful with port 0).
    public var boundPort: Int? {
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

    /// Accepts connections on a thread of its own, handing each to `handle` with who connected.
    /// While `gate` answers false nothing is accepted (clients wait in the listen backlog, as with
    /// QEMU's full server) until `resume()` is called and the gate opens.
    public func start(_ handle: @escaping @Sendable (Int32, Peer) -> Void, gate: (@Sendable () -> Bool)? = nil) {
        spawnThread { [self] in
            var counter = 0
            defer {
                Glibc.close(fd)
                Glibc.close(wakeRead)
            }
            while !closed.load(ordering: .relaxed) {
                if let gate, !gate() {
                    var waits = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0), pollfd(fd: resumeRead, events: Int16(POLLIN), revents: 0)]
                    if poll(&waits, 2, -1) < 0 && errno != EINTR { break }
                    if waits[0].revents != 0 { break }
                    var drain = [UInt8](repeating: 0, count: 64)
                    while read(resumeRead, &drain, drain.count) > 0 {}
                    continue
                }
                var ready = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
                if poll(&ready, 2, -1) < 0 {
                    if errno == EINTR { continue }
                    break
                }
                if ready[1].revents != 0 || closed.load(ordering: .relaxed) { break }
                guard ready[0].revents & Int16(POLLIN) != 0 else {
                    if ready[0].revents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0 { break }
                    continue
                }
                var storage = sockaddr_storage()
                var size = socklen_t(MemoryLayout<sockaddr_storage>.size)
                let client = withUnsafeMutablePointer(to: &storage) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { blk_accept(fd, $0, &size) }
                }
                if client < 0 {
                    if errno == EINTR || errno == ECONNABORTED || errno == EAGAIN { continue }
                    if errno == EMFILE || errno == ENFILE {
                        Log.error("accept on \(address): out of file descriptors")
                        usleep(100_000)
                        continue
                    }
                    break
                }
                counter += 1
                let peer = Peer.of(client, address: storage, fallback: "\(address)#\(counter)")
                if Int32(storage.ss_family) != AF_UNIX { _ = blk_set_nodelay(client) }
                handle(client, peer)
            }
        }
    }

    deinit {
        // Here, not in the accept thread: `resume()` may write until the last reference is gone.
        Glibc.close(resumeRead)
        Glibc.close(resumeWrite)
    }

    /// Tells a gated accept thread to ask its gate again.
    public func resume() {
        var byte: UInt8 = 1
        _ = write(resumeWrite, &byte, 1)
    }

    /// Stops accepting: wakes the accept thread, which closes blockd's descriptor (for an inherited
    /// socket only blockd's copy; the service manager's keeps listening); removes a unix socket file.
    public func close() {
        guard !closed.exchange(true, ordering: .relaxed) else { return }
        var byte: UInt8 = 1
        _ = write(wakeWrite, &byte, 1)
        Glibc.close(wakeWrite)
        if case .unix(let path) = address { unlink(path) }
    }

    private static func bindUnix(_ path: String) throws(OptionError) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw OptionError("socket: \(String(cString: strerror(errno)))") }
        var info = stat()
        if lstat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFSOCK {
            unlink(path)  // a stale socket from an earlier run
        }
        let bound = withUnixAddress(path) { bind(fd, $0, $1) }
        guard bound == 0, listen(fd, 128) == 0 else {
            let message = String(cString: strerror(errno))
            Glibc.close(fd)
            throw OptionError("cannot listen on unix socket '\(path)': \(message)")
        }
        return fd
    }

    private static func bindInet(host: String, port: String) throws(OptionError) -> Int32 {
        do throws(InetListenFailure) {
            return try listeningInetSocket(host: host, port: port)
        } catch {
            switch error {
            case .resolve(let reason): throw OptionError("cannot resolve '\(host):\(port)': \(reason)")
            case .bind(let reason): throw OptionError("cannot listen on \(host):\(port): \(reason)")
            }
        }
    }

    /// A bound, listening TCP socket on the first usable address of `host` (a name, an address, an
    /// IPv6 address in brackets, or empty for every address) and `port`; IPv6 sockets are v6-only.
    public static func listeningInetSocket(
        host: String, port: String, numericPort: Bool = true, backlog: Int32 = 128
    ) throws(InetListenFailure) -> Int32 {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = numericPort ? AI_PASSIVE | AI_NUMERICSERV : AI_PASSIVE
        var list: UnsafeMutablePointer<addrinfo>?
        let bareHost = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        let status = getaddrinfo(bareHost.isEmpty ? nil : bareHost, port, &hints, &list)
        guard status == 0, let first = list else { throw .resolve(String(cString: gai_strerror(status))) }
        defer { freeaddrinfo(list) }
        var lastError = "no usable address"
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
            if bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0, listen(fd, backlog) == 0 {
                return fd
            }
            lastError = String(cString: strerror(errno))
            Glibc.close(fd)
        }
        throw .bind(lastError)
    }
}

/// Why a TCP listening socket could not be made, in the C library's words.
public enum InetListenFailure: Error, Sendable {
    /// The host or port did not resolve (`gai_strerror`).
    case resolve(String)
    /// No resolved address could be bound and listened on (the last `strerror`).
    case bind(String)
}
