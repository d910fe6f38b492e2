#if canImport(Glibc)
import Glibc
#endif
import NBDProtocol
import Sockets

/// The client side of the NBD handshake that `blockd-nbd -L` and `-c` need (fixed newstyle, no
/// TLS), with qemu-nbd's messages.
struct QemuNbdClient {
    /// What NBD_OPT_INFO / NBD_OPT_GO told about an export.
    struct ExportInfo {
        var name: String
        var description = ""
        var size: UInt64 = 0
        var flags: UInt16 = 0
        var minimumBlock: UInt32 = 0
        var preferredBlock: UInt32 = 0
        var maximumBlock: UInt32 = 0
        var contexts: [String] = []
    }

    let io: SocketIO
    /// Whether the server agreed to structured replies.
    private(set) var structured = false

    /// Connects to `address` (unix or inet) and reads the server's greeting.
    static func connect(_ address: ListenAddress) throws(QemuNbdError) -> QemuNbdClient {
        let fd: Int32
        let shown: String
        switch address {
        case .unix(let path):
            shown = path
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw QemuNbdError("Failed to create socket: \(String(cString: strerror(errno)))") }
            guard withUnixAddress(path, { Glibc.connect(fd, $0, $1) }) == 0 else {
                let reason = String(cString: strerror(errno))
                Glibc.close(fd)
                throw QemuNbdError("Failed to connect to '\(path)': \(reason)")
            }
        case .inet(let host, let port):
            shown = "\(host):\(port)"
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var list: UnsafeMutablePointer<addrinfo>?
            let status = getaddrinfo(host, port, &hints, &list)
            guard status == 0, let first = list else {
                throw QemuNbdError("address resolution failed for \(shown): \(String(cString: gai_strerror(status)))")
            }
            defer { freeaddrinfo(list) }
            var connected: Int32 = -1
            var reason = "no usable address"
            var entry: UnsafeMutablePointer<addrinfo>? = first
            while let info = entry, connected < 0 {
                entry = info.pointee.ai_next
                let candidate = socket(info.pointee.ai_family, info.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), info.pointee.ai_protocol)
                guard candidate >= 0 else { continue }
                if Glibc.connect(candidate, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 {
                    connected = candidate
                } else {
                    reason = String(cString: strerror(errno))
                    Glibc.close(candidate)
                }
            }
            guard connected >= 0 else { throw QemuNbdError("Failed to connect to '\(shown)': \(reason)") }
            fd = connected
        default:
            throw QemuNbdError("unsupported address \(address)")
        }
        let client = QemuNbdClient(io: SocketIO(fd: fd))
        guard let greeting = client.io.receiveBytes(18) else {
            client.close()
            throw QemuNbdError("Failed to read initial magic: Unexpected end-of-file before all data were read")
        }
        var reader = ByteReader(greeting)
        guard reader.read(UInt64.self) == NBDMagic.initPassword else {
            client.close()
            throw QemuNbdError("Bad initial magic received: 0x\(String(BigEndian.load(UInt64.self, greeting, 0), radix: 16))")
        }
        guard reader.read(UInt64.self) == NBDMagic.option, let flags = reader.read(UInt16.self),
              flags & HandshakeFlags.fixedNewstyle.rawValue != 0 else {
            client.close()
            throw QemuNbdError("Server does not support the fixed newstyle protocol")
        }
        var writer = ByteWriter()
        writer.append(UInt32(flags & (HandshakeFlags.fixedNewstyle.rawValue | HandshakeFlags.noZeroes.rawValue)))
        guard client.io.sendAll(writer.bytes) else {
            client.close()
            throw QemuNbdError("Failed to send clientflags field")
        }
        return client
    }

    func close() {
        Glibc.close(io.fd)
    }

    /// Sends one option.
    func send(_ option: NBDOption, _ data: [UInt8] = []) throws(QemuNbdError) {
        var bytes = OptionHeader(option: option.rawValue, length: UInt32(data.count)).encode()
        bytes.append(contentsOf: data)
        guard io.sendAll(bytes) else { throw QemuNbdError("Failed to send option request: \(String(cString: strerror(errno)))") }
    }

    /// Reads one option reply: its type code and data.
    func reply(to option: NBDOption) throws(QemuNbdError) -> (type: UInt32, data: [UInt8]) {
        guard let header = io.receiveBytes(20) else {
            throw QemuNbdError("Failed to read option reply: Unexpected end-of-file before all data were read")
        }
        var reader = ByteReader(header)
        guard reader.read(UInt64.self) == NBDMagic.optionReply else { throw QemuNbdError("Unexpected option reply magic") }
        _ = reader.read(UInt32.self)
        let type = reader.read(UInt32.self)!
        let length = reader.read(UInt32.self)!
        guard length <= 1 << 20, let data = io.receiveBytes(Int(length)) else { throw QemuNbdError("Failed to read option reply") }
        return (type, data)
    }

    /// NBD_OPT_STRUCTURED_REPLY; true when the server agreed.
    mutating func negotiateStructuredReplies() throws(QemuNbdError) {
        try send(.structuredReply)
        structured = try reply(to: .structuredReply).type == OptionReplyType.ack.rawValue
    }

    /// NBD_OPT_LIST: each export's name and description.
    func listExports() throws(QemuNbdError) -> [(name: String, description: String)] {
        try send(.list)
        var exports: [(name: String, description: String)] = []
        while true {
            let (type, data) = try reply(to: .list)
            if type == OptionReplyType.ack.rawValue { return exports }
            guard type == OptionReplyType.server.rawValue, data.count >= 4 else {
                throw QemuNbdError("Server does not support export lists (reply type 0x\(String(type, radix: 16)))")
            }
            let length = Int(BigEndian.load(UInt32.self, data, 0))
            guard 4 + length <= data.count else { throw QemuNbdError("incorrect option name length") }
            let name = String(decoding: data[4..<(4 + length)], as: UTF8.self)
            let description = String(decoding: data[(4 + length)...], as: UTF8.self)
            exports.append((name, description))
        }
    }

    /// NBD_OPT_INFO or NBD_OPT_GO for `name`, asking for block sizes.
    func info(_ name: String, go: Bool, blockSizes: Bool = true) throws(QemuNbdError) -> ExportInfo {
        let option: NBDOption = go ? .go : .info
        try send(option, InfoRequest(exportName: name, requests: blockSizes ? [InfoType.blockSize.rawValue] : []).encode())
        var info = ExportInfo(name: name)
        while true {
            let (type, data) = try reply(to: option)
            if type == OptionReplyType.ack.rawValue { return info }
            guard type == OptionReplyType.info.rawValue else {
                let message = String(decoding: data, as: UTF8.self)
                throw QemuNbdError("Requested export not available\(message.isEmpty ? "" : "\nserver reported: \(message)")")
            }
            guard data.count >= 2 else { continue }
            switch BigEndian.load(UInt16.self, data, 0) {
            case InfoType.export.rawValue where data.count >= 12:
                info.size = BigEndian.load(UInt64.self, data, 2)
                info.flags = BigEndian.load(UInt16.self, data, 10)
            case InfoType.blockSize.rawValue where data.count >= 14:
                info.minimumBlock = BigEndian.load(UInt32.self, data, 2)
                info.preferredBlock = BigEndian.load(UInt32.self, data, 6)
                info.maximumBlock = BigEndian.load(UInt32.self, data, 10)
            case InfoType.description.rawValue:
                info.description = String(decoding: data[2...], as: UTF8.self)
            default:
                break
            }
        }
    }

    /// NBD_OPT_LIST_META_CONTEXT with no query: every context the export offers.
    func metaContexts(_ name: String) throws(QemuNbdError) -> [String] {
        try send(.listMetaContext, MetaContextRequest(exportName: name, queries: []).encode())
        var contexts: [String] = []
        while true {
            let (type, data) = try reply(to: .listMetaContext)
            if type == OptionReplyType.ack.rawValue { return contexts }
            guard type == OptionReplyType.metaContext.rawValue else { return contexts }
            if data.count >= 4 { contexts.append(String(decoding: data[4...], as: UTF8.self)) }
        }
    }

    /// NBD_OPT_ABORT, as a courtesy before hanging up.
    func abort() {
        try? send(.abort)
        _ = try? reply(to: .abort)
    }
}
