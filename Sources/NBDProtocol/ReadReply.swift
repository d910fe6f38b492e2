/// The replies to `NBD_CMD_READ`: a simple reply followed by the data, or `NBD_REPLY_TYPE_OFFSET_DATA`
/// and `NBD_REPLY_TYPE_OFFSET_HOLE` chunks (doc/proto.md § Structured reply types).
public enum ReadReply {
    /// Payload of an `OFFSET_HOLE` chunk: offset and length.
    public static let holePayloadSize = 12
    /// The part of an `OFFSET_DATA` payload before the data: its offset.
    public static let dataOffsetSize = 8

    /// Bytes before the data of a one-piece read reply in `style`.
    @inlinable
    public static func prefixSize(_ style: ReplyStyle) -> Int {
        style == .simple ? ReplyHeader.simpleSize : style.chunkHeaderSize + dataOffsetSize
    }

    /// Writes what precedes `count` data bytes read at `dataOffset`: a successful simple reply, or an
    /// `OFFSET_DATA` chunk header and offset with `flags`; returns its size (`prefixSize` for one-piece replies).
    @inlinable
    @discardableResult
    public static func writeDataPrefix(
        style: ReplyStyle, flags: ReplyFlags = .done, cookie: UInt64, requestOffset: UInt64, dataOffset: UInt64, count: Int,
        to base: UnsafeMutableRawPointer
    ) -> Int {
        if style == .simple {
            ReplyHeader.writeSimple(error: 0, cookie: cookie, to: base)
            return ReplyHeader.simpleSize
        }
        let size = ReplyHeader.writeChunk(
            style: style, flags: flags, type: .offsetData, cookie: cookie, offset: requestOffset,
            payloadLength: UInt64(dataOffsetSize + count), to: base)
        BigEndian.store(dataOffset, base, size)
        return size + dataOffsetSize
    }

    /// Writes an `OFFSET_HOLE` chunk for `length` zero bytes at `holeOffset`; returns its size.
    @inlinable
    @discardableResult
    public static func writeHole(
        style: ReplyStyle, flags: ReplyFlags = [], cookie: UInt64, requestOffset: UInt64, holeOffset: UInt64, length: UInt32,
        to base: UnsafeMutableRawPointer
    ) -> Int {
        let size = ReplyHeader.writeChunk(
            style: style, flags: flags, type: .offsetHole, cookie: cookie, offset: requestOffset,
            payloadLength: UInt64(holePayloadSize), to: base)
        BigEndian.store(holeOffset, base, size)
        BigEndian.store(length, base, size + 8)
        return size + holePayloadSize
    }

    /// Sets `NBD_REPLY_FLAG_DONE` on the chunk written at `base` (the last chunk of a reply, known only once written).
    @inlinable
    public static func markDone(chunkAt base: UnsafeMutableRawPointer) {
        BigEndian.store(ReplyFlags.done.rawValue, base, 4)
    }
}
