/// `NBD_REPLY_TYPE_BLOCK_STATUS` and `NBD_REPLY_TYPE_BLOCK_STATUS_EXT` chunks: one per selected meta
/// context, a context id followed by extent descriptors (doc/proto.md § Structured reply types).
public enum BlockStatusReply {
    /// Size of one descriptor: length and flags, 32-bit each, or 64-bit each with extended headers.
    @inlinable
    public static func descriptorSize(_ style: ReplyStyle) -> Int { style == .extended ? 16 : 8 }

    /// Payload size of a chunk holding `count` descriptors (the extended form adds a descriptor count).
    @inlinable
    public static func payloadSize(_ style: ReplyStyle, count: Int) -> Int {
        (style == .extended ? 8 : 4) + count * descriptorSize(style)
    }

    /// Writes the chunk header, context id and (extended) descriptor count for `count` descriptors;
    /// returns where the first descriptor goes. `style` must not be `.simple`.
    @inlinable
    public static func writeHeader(
        style: ReplyStyle, flags: ReplyFlags, cookie: UInt64, offset: UInt64, context: UInt32, count: Int,
        to base: UnsafeMutableRawPointer
    ) -> Int {
        let wide = style == .extended
        var at = ReplyHeader.writeChunk(
            style: style, flags: flags, type: wide ? .blockStatusExtended : .blockStatus, cookie: cookie, offset: offset,
            payloadLength: UInt64(payloadSize(style, count: count)), to: base)
        BigEndian.store(context, base, at)
        at += 4
        if wide {
            BigEndian.store(UInt32(count), base, at)
            at += 4
        }
        return at
    }

    /// Writes one descriptor at `at` bytes from `base`; returns where the next one goes. In the
    /// compact form `length` must fit 32 bits.
    @inlinable
    public static func writeDescriptor(
        style: ReplyStyle, length: UInt64, flags: UInt32, to base: UnsafeMutableRawPointer, at: Int
    ) -> Int {
        if style == .extended {
            BigEndian.store(length, base, at)
            BigEndian.store(UInt64(flags), base, at + 8)
            return at + 16
        }
        BigEndian.store(UInt32(truncatingIfNeeded: length), base, at)
        BigEndian.store(flags, base, at + 4)
        return at + 8
    }
}
