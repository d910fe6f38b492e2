#if canImport(Glibc)
import Glibc
#endif

/// A failure of the test client: the server's bytes were not what the protocol says, or the stream ended.
public struct NBDTestClientError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A minimal NBD client for unit tests, written from doc/proto.md independently of the server's
/// codecs: the fixed-newstyle handshake (structured replies, extended headers, meta contexts, GO)
/// and transmission requests and replies over a connected socket (usually one end of `socketPair`).
public final class NBDTestClient {
    /// An NBD command type (doc/proto.md § Request types).
    public enum Command: UInt16, Sendable {
        case read = 0, write = 1, disconnect = 2, flush = 3, trim = 4, cache = 5, writeZeroes = 6, blockStatus = 7
    }

    /// A reply message: a simple reply (with the data of a READ) or one structured reply chunk.
    public struct Reply: Equatable, Sendable {
        /// True for a structured (or extended) chunk.
        public var structured: Bool
        /// The request's cookie.
        public var cookie: UInt64
        /// A simple reply's error, or the errno of an error chunk; 0 otherwise.
        public var error: UInt32
        /// A chunk's flags (`NBD_REPLY_FLAG_DONE` is 1); 1 for a simple reply.
        public var flags: UInt16
        /// A chunk's type; 0 for a simple reply.
        public var type: UInt16
        /// A chunk's payload, or the data of a simple READ reply.
        public var payload: [UInt8]
        /// True when this is the last message of its request.
        public var done: Bool { flags & 1 != 0 }
    }

    /// What the server said about the export at the end of the handshake.
    public struct ExportInfo: Sendable {
        public var size: UInt64
        public var flags: UInt16
    }

    /// The client's descriptor; closed by `close` or on deinit.
    public private(set) var fd: Int32
    private var extended = false
    /// Lengths of READs sent, by cookie, to read the data of their simple replies.
    private var readLengths: [UInt64: Int] = [:]

    /// A connected pair of unix stream sockets: (client, server).
    public static func socketPair() -> (client: Int32, server: Int32) {
        var fds: [Int32] = [0, 0]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0, "socketpair failed")
        return (fds[0], fds[1])
    }

    /// Speaks on `fd`; every receive gives up after `timeout` seconds so that a test fails instead of hanging.
    public init(fd: Int32, timeout: Int = 20) {
        self.fd = fd
        var limit = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close() }

    /// Closes the socket.
    public func close() {
        if fd >= 0 { _ = Glibc.close(fd) }
        fd = -1
    }

    /// Stops sending (the server sees the end of the stream) but keeps receiving.
    public func shutdownWrite() { _ = shutdown(fd, Int32(SHUT_WR)) }

    // MARK: - Bytes

    /// Sends `bytes` whole.
    public func send(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let result = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
            if result < 0 && errno == EINTR { continue }
            guard result > 0 else { throw NBDTestClientError("send failed: errno \(errno)") }
            sent += result
        }
    }

    /// Receives exactly `count` bytes.
    public func receive(_ count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let result = bytes.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + done, count - done, 0) }
            if result < 0 && errno == EINTR { continue }
            guard result > 0 else { throw NBDTestClientError(result == 0 ? "end of stream after \(done) of \(count) bytes" : "receive failed: errno \(errno)") }
            done += result
        }
        return bytes
    }

    /// True when the server closed the connection: the next receive sees the end of the stream.
    public func seesEndOfStream() -> Bool {
        var byte: UInt8 = 0
        while true {
            let result = recv(fd, &byte, 1, 0)
            if result < 0 && errno == EINTR { continue }
            return result == 0 || (result < 0 && errno == ECONNRESET)
        }
    }

    // MARK: - Handshake

    /// Negotiates `export` with `NBD_OPT_GO`, after asking for structured replies or extended headers
    /// and selecting `metaContexts`; fails unless the server acknowledges each.
    @discardableResult
    public func handshake(export: String = "", structured: Bool = false, extended: Bool = false, metaContexts: [String] = []) throws -> ExportInfo {
        var reader = ByteCursor(try receive(18))
        guard reader.u64() == 0x4e42_444d_4147_4943, reader.u64() == 0x4948_4156_454f_5054 else {
            throw NBDTestClientError("bad greeting")
        }
        guard reader.u16() & 1 != 0 else { throw NBDTestClientError("server is not fixed-newstyle") }
        try send(bigEndianBytes(UInt32(3)))   // NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES
        if extended {
            try expectAck(option: 11, data: [])
            self.extended = true
        } else if structured {
            try expectAck(option: 8, data: [])
        }
        if !metaContexts.isEmpty {
            var data = bigEndianBytes(UInt32(export.utf8.count)) + Array(export.utf8) + bigEndianBytes(UInt32(metaContexts.count))
            for context in metaContexts { data += bigEndianBytes(UInt32(context.utf8.count)) + Array(context.utf8) }
            try sendOption(10, data)
            while try receiveOptionReply(option: 10).type == 4 {}
        }
        try sendOption(7, bigEndianBytes(UInt32(export.utf8.count)) + Array(export.utf8) + bigEndianBytes(UInt16(0)))
        var info: ExportInfo?
        while true {
            let reply = try receiveOptionReply(option: 7)
            if reply.type == 1 { break }
            guard reply.type == 3 else { throw NBDTestClientError("NBD_OPT_GO answered with reply type 0x\(String(reply.type, radix: 16))") }
            var cursor = ByteCursor(reply.data)
            if cursor.u16() == 0 { info = ExportInfo(size: cursor.u64(), flags: cursor.u16()) }
        }
        guard let info else { throw NBDTestClientError("no NBD_INFO_EXPORT before the ACK") }
        return info
    }

    private func sendOption(_ option: UInt32, _ data: [UInt8]) throws {
        try send(bigEndianBytes(UInt64(0x4948_4156_454f_5054)) + bigEndianBytes(option) + bigEndianBytes(UInt32(data.count)) + data)
    }

    private func receiveOptionReply(option: UInt32) throws -> (type: UInt32, data: [UInt8]) {
        var header = ByteCursor(try receive(20))
        guard header.u64() == 0x0003_e889_0455_65a9 else { throw NBDTestClientError("bad option reply magic") }
        guard header.u32() == option else { throw NBDTestClientError("option reply for another option") }
        let type = header.u32()
        return (type, try receive(Int(header.u32())))
    }

    private func expectAck(option: UInt32, data: [UInt8]) throws {
        try sendOption(option, data)
        let reply = try receiveOptionReply(option: option)
        guard reply.type == 1 else { throw NBDTestClientError("option \(option) refused with 0x\(String(reply.type, radix: 16))") }
    }

    // MARK: - Transmission

    /// The bytes of a request (compact, or extended once negotiated); a WRITE's `payload` follows.
    public func request(
        _ command: Command, flags: UInt16 = 0, cookie: UInt64, offset: UInt64 = 0, length: UInt64, payload: [UInt8] = []
    ) -> [UInt8] {
        if command == .read { readLengths[cookie] = Int(length) }
        let magic = extended ? bigEndianBytes(UInt32(0x21e4_1c71)) : bigEndianBytes(UInt32(0x2560_9513))
        let size = extended ? bigEndianBytes(length) : bigEndianBytes(UInt32(truncatingIfNeeded: length))
        return magic + bigEndianBytes(flags) + bigEndianBytes(command.rawValue) + bigEndianBytes(cookie) + bigEndianBytes(offset) + size + payload
    }

    /// Sends one request.
    public func send(
        _ command: Command, flags: UInt16 = 0, cookie: UInt64, offset: UInt64 = 0, length: UInt64, payload: [UInt8] = []
    ) throws {
        try send(request(command, flags: flags, cookie: cookie, offset: offset, length: length, payload: payload))
    }

    /// Receives one reply message (a simple reply, or one chunk).
    public func receiveReply() throws -> Reply {
        var cursor = ByteCursor(try receive(4))
        switch cursor.u32() {
        case 0x6744_6698:
            var rest = ByteCursor(try receive(12))
            let error = rest.u32()
            let cookie = rest.u64()
            var data: [UInt8] = []
            if let count = readLengths.removeValue(forKey: cookie), error == 0 { data = try receive(count) }
            return Reply(structured: false, cookie: cookie, error: error, flags: 1, type: 0, payload: data)
        case let magic where magic == 0x668e_33ef || magic == 0x6e8a_278c:
            let wide = magic == 0x6e8a_278c
            var rest = ByteCursor(try receive(wide ? 28 : 16))
            let flags = rest.u16()
            let type = rest.u16()
            let cookie = rest.u64()
            if wide { _ = rest.u64() }
            let length = wide ? Int(rest.u64()) : Int(rest.u32())
            let payload = try receive(length)
            var error: UInt32 = 0
            if type & 0x8000 != 0 {
                var body = ByteCursor(payload)
                error = body.u32()
            }
            if flags & 1 != 0 { readLengths[cookie] = nil }
            return Reply(structured: true, cookie: cookie, error: error, flags: flags, type: type, payload: payload)
        case let magic:
            throw NBDTestClientError("bad reply magic 0x\(String(magic, radix: 16))")
        }
    }

    /// Receives the messages of one request until its last (`done`) one; the others must not interleave.
    public func receiveAll() throws -> [Reply] {
        var replies = [try receiveReply()]
        while !replies.last!.done {
            let next = try receiveReply()
            guard next.cookie == replies[0].cookie else { throw NBDTestClientError("chunks of two requests interleave") }
            replies.append(next)
        }
        return replies
    }

    /// Writes `data` at `offset` and returns the reply's error.
    public func write(_ data: [UInt8], at offset: UInt64, cookie: UInt64 = 1) throws -> UInt32 {
        try send(.write, cookie: cookie, offset: offset, length: UInt64(data.count), payload: data)
        return try receiveAll().last!.error
    }

    /// Reads `length` bytes at `offset`: the data (holes as zeroes), or the error.
    public func read(at offset: UInt64, length: Int, cookie: UInt64 = 1) throws -> Result<[UInt8], ReplyError> {
        try send(.read, cookie: cookie, offset: offset, length: UInt64(length))
        var data = [UInt8](repeating: 0, count: length)
        for reply in try receiveAll() {
            if reply.error != 0 { return .failure(ReplyError(errno: reply.error)) }
            if !reply.structured {
                data = reply.payload
            } else if reply.type == 1 {
                var cursor = ByteCursor(reply.payload)
                let start = Int(cursor.u64() - offset)
                data.replaceSubrange(start..<start + reply.payload.count - 8, with: reply.payload[8...])
            }
        }
        return .success(data)
    }

    /// A reply's errno, as an error.
    public struct ReplyError: Error, Equatable {
        public let errno: UInt32
        public init(errno: UInt32) { self.errno = errno }
    }
}

/// Big-endian bytes of an integer.
public func bigEndianBytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.bigEndian) { Array($0) }
}

/// Reads big-endian integers from bytes (traps past the end: a test failure).
public struct ByteCursor {
    private let bytes: [UInt8]
    private var position = 0

    /// Starts at the first byte.
    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    private mutating func next<T: FixedWidthInteger>(_ type: T.Type) -> T {
        let size = MemoryLayout<T>.size
        defer { position += size }
        return bytes[position..<position + size].reduce(T(0)) { $0 << 8 | T($1) }
    }

    public mutating func u16() -> UInt16 { next(UInt16.self) }
    public mutating func u32() -> UInt32 { next(UInt32.self) }
    public mutating func u64() -> UInt64 { next(UInt64.self) }
}
