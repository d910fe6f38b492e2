#if canImport(Glibc)
import Glibc
#endif
import JSON
import Sockets

/// A failure talking to a monitor, worded for the user.
public struct QMPClientError: Error, Sendable, CustomStringConvertible {
    /// The message.
    public var description: String
    /// Creates an error.
    public init(_ description: String) { self.description = description }
}

/// A client connection to a QMP monitor: connects, reads the greeting, negotiates, runs commands
/// and collects the events that arrive meanwhile.
public final class QMPConnection {
    private let io: SocketIO
    private var splitter = JSONStreamSplitter()
    private var pending: [JSONValue] = []
    private var nextID: Int64 = 1
    /// The greeting the server sent.
    public private(set) var greeting: JSONValue = .null
    /// Events received while waiting for replies, oldest first.
    public private(set) var events: [JSONValue] = []

    /// Connects to a unix socket path, or to `host:port` over TCP.
    public init(unixPath: String? = nil, host: String? = nil, port: Int? = nil) throws(QMPClientError) {
        let fd: Int32
        if let unixPath {
            fd = try QMPConnection.connectUnix(unixPath)
        } else if let host, let port {
            fd = try QMPConnection.connectTCP(host, port)
        } else {
            throw QMPClientError("give a monitor socket (--socket PATH) or --host and --port")
        }
        io = SocketIO(fd: fd)
        greeting = try readMessage()
        guard greeting["QMP"] != nil else { throw QMPClientError("the peer is not a QMP monitor (no greeting)") }
        _ = try execute("qmp_capabilities", arguments: nil)
    }

    deinit { close(io.fd) }

    /// Runs a command; returns the whole reply (`return` or `error` member).
    public func execute(_ command: String, arguments: JSONValue?) throws(QMPClientError) -> JSONValue {
        let id = JSONValue.integer(nextID)
        nextID += 1
        var request: [String: JSONValue] = ["execute": .string(command), "id": id]
        if let arguments { request["arguments"] = arguments }
        try send(.object(request))
        while true {
            let message = try readMessage()
            if message["event"] != nil {
                events.append(message)
            } else if message["id"] == id || (message["id"] == nil && message["error"] != nil) {
                return message
            }
        }
    }

    /// Waits for the next event, up to `timeout` seconds (nil: forever); nil on timeout.
    public func nextEvent(timeout: Double?) throws(QMPClientError) -> JSONValue? {
        if !events.isEmpty { return events.removeFirst() }
        if let timeout {
            var ready = pollfd(fd: io.fd, events: Int16(POLLIN), revents: 0)
            if pending.isEmpty && poll(&ready, 1, Int32(max(0, timeout * 1000))) == 0 { return nil }
        }
        let message = try readMessage()
        return message["event"] != nil ? message : try nextEvent(timeout: timeout)
    }

    private func send(_ message: JSONValue) throws(QMPClientError) {
        var bytes = Array(message.serialized().utf8)
        bytes.append(10)
        let sent = bytes.withUnsafeBytes { io.sendAll($0.baseAddress!, count: $0.count) }
        guard sent else { throw QMPClientError("the monitor closed the connection") }
    }

    private func readMessage() throws(QMPClientError) -> JSONValue {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while pending.isEmpty {
            let count = buffer.withUnsafeMutableBytes { io.receive(into: $0.baseAddress!, count: $0.count) }
            guard let count, count > 0 else { throw QMPClientError("the monitor closed the connection") }
            for piece in splitter.feed(buffer[0..<count]) {
                guard case .value(let bytes) = piece else { throw QMPClientError("the monitor sent something that is not JSON") }
                do {
                    pending.append(try JSONValue.parse(bytes: bytes))
                } catch {
                    throw QMPClientError("the monitor sent invalid JSON: \(error.message)")
                }
            }
        }
        return pending.removeFirst()
    }

    private static func connectUnix(_ path: String) throws(QMPClientError) -> Int32 {
        guard path.utf8.count < 108 else { throw QMPClientError("socket path '\(path)' is too long") }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        let result = withUnixAddress(path) { connect(fd, $0, $1) }
        guard result == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw QMPClientError("cannot connect to '\(path)': \(message)")
        }
        return fd
    }

    private static func connectTCP(_ host: String, _ port: Int) throws(QMPClientError) -> Int32 {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &list) == 0, let first = list else {
            throw QMPClientError("cannot resolve '\(host)'")
        }
        defer { freeaddrinfo(list) }
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let info = entry {
            entry = info.pointee.ai_next
            let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), 0)
            if fd >= 0 && connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 { return fd }
            if fd >= 0 { close(fd) }
        }
        throw QMPClientError("cannot connect to \(host):\(port): \(String(cString: strerror(errno)))")
    }
}
