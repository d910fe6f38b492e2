/// One transmission request header, compact or extended (doc/proto.md § Request message).
public struct RequestHeader: Sendable, Equatable {
    /// Size of a compact header (`NBD_REQUEST_MAGIC`).
    public static let compactSize = 28
    /// Size of an extended header (`NBD_EXTENDED_REQUEST_MAGIC`).
    public static let extendedSize = 32

    /// Command flags as sent, including bits this server does not know.
    public var flags: UInt16
    /// Command type as sent; `NBDCommand(rawValue:)` may not know it.
    public var type: UInt16
    /// The client's opaque cookie (formerly "handle"), echoed in every reply.
    public var cookie: UInt64
    /// Byte offset into the export.
    public var offset: UInt64
    /// Length: of the range, and for WRITE also of the payload that follows.
    public var length: UInt64

    /// Creates a header from its fields.
    public init(flags: UInt16, type: UInt16, cookie: UInt64, offset: UInt64, length: UInt64) {
        self.flags = flags
        self.type = type
        self.cookie = cookie
        self.offset = offset
        self.length = length
    }

    /// The command, when it is one this server knows.
    public var command: NBDCommand? { NBDCommand(rawValue: type) }
    /// The flags, as a set.
    public var commandFlags: CommandFlags { CommandFlags(rawValue: flags) }

    /// What decoding the start of a buffer produced.
    public enum Decoded: Sendable, Equatable {
        /// A whole header, occupying `size` bytes.
        case header(RequestHeader, size: Int)
        /// Not enough bytes yet.
        case needMore
        /// The bytes do not start with the expected magic: the stream is out of sync.
        case badMagic(UInt32)
    }

    /// Decodes a header from the start of `bytes`, in the style negotiated for the connection.
    @inlinable
    public static func decode(_ bytes: UnsafeRawBufferPointer, extended: Bool) -> Decoded {
        let size = extended ? extendedSize : compactSize
        guard bytes.count >= 4, let base = bytes.baseAddress else { return .needMore }
        let magic = BigEndian.load(UInt32.self, base, 0)
        guard magic == (extended ? NBDMagic.extendedRequest : NBDMagic.request) else { return .badMagic(magic) }
        guard bytes.count >= size else { return .needMore }
        let length: UInt64 = extended
            ? BigEndian.load(UInt64.self, base, 24)
            : UInt64(BigEndian.load(UInt32.self, base, 24))
        let header = RequestHeader(
            flags: BigEndian.load(UInt16.self, base, 4),
            type: BigEndian.load(UInt16.self, base, 6),
            cookie: BigEndian.load(UInt64.self, base, 8),
            offset: BigEndian.load(UInt64.self, base, 16),
            length: length)
        return .header(header, size: size)
    }

    /// Encodes this header (what a client sends); used by tests and the project's own client.
    public func encode(extended: Bool) -> [UInt8] {
        var writer = ByteWriter()
        writer.append(extended ? NBDMagic.extendedRequest : NBDMagic.request)
        writer.append(flags)
        writer.append(type)
        writer.append(cookie)
        writer.append(offset)
        if extended { writer.append(length) } else { writer.append(UInt32(truncatingIfNeeded: length)) }
        return writer.bytes
    }
}
