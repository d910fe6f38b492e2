/// The reply framing a connection negotiated (doc/proto.md § Simple reply message, § Structured reply chunk message).
public enum ReplyStyle: Sendable, Equatable {
    /// Only simple replies: no `NBD_OPT_STRUCTURED_REPLY`.
    case simple
    /// Structured replies with 20-byte chunk headers.
    case structured
    /// Extended headers: 32-byte chunk headers with 64-bit lengths.
    case extended

    /// The size of one chunk header in this style (a simple reply's for `.simple`).
    @inlinable
    public var chunkHeaderSize: Int {
        switch self {
        case .simple: return ReplyHeader.simpleSize
        case .structured: return ReplyHeader.structuredSize
        case .extended: return ReplyHeader.extendedSize
        }
    }
}

/// Encoders for reply headers, written straight into the output buffer.
public enum ReplyHeader {
    /// Size of a simple reply: magic, error, cookie.
    public static let simpleSize = 16
    /// Size of a structured chunk header.
    public static let structuredSize = 20
    /// Size of an extended chunk header.
    public static let extendedSize = 32

    /// Writes a simple reply (`NBD_SIMPLE_REPLY_MAGIC`) of 16 bytes at `base`.
    @inlinable
    public static func writeSimple(error: UInt32, cookie: UInt64, to base: UnsafeMutableRawPointer) {
        BigEndian.store(NBDMagic.simpleReply, base, 0)
        BigEndian.store(error, base, 4)
        BigEndian.store(cookie, base, 8)
    }

    /// Writes a chunk header in `style` (structured or extended) at `base`; returns its size.
    /// `offset` is the request's offset, echoed only by extended headers.
    @inlinable
    @discardableResult
    public static func writeChunk(
        style: ReplyStyle, flags: ReplyFlags, type: ReplyChunkType, cookie: UInt64,
        offset: UInt64, payloadLength: UInt64, to base: UnsafeMutableRawPointer
    ) -> Int {
        switch style {
        case .simple:
            preconditionFailure("a simple reply has no chunks")
        case .structured:
            BigEndian.store(NBDMagic.structuredReply, base, 0)
            BigEndian.store(flags.rawValue, base, 4)
            BigEndian.store(type.rawValue, base, 6)
            BigEndian.store(cookie, base, 8)
            BigEndian.store(UInt32(truncatingIfNeeded: payloadLength), base, 16)
            return structuredSize
        case .extended:
            BigEndian.store(NBDMagic.extendedReply, base, 0)
            BigEndian.store(flags.rawValue, base, 4)
            BigEndian.store(type.rawValue, base, 6)
            BigEndian.store(cookie, base, 8)
            BigEndian.store(offset, base, 16)
            BigEndian.store(payloadLength, base, 24)
            return extendedSize
        }
    }
}
