/// Replies that carry no data: a success or an errno (doc/proto.md § Simple reply message,
/// § Structured reply types `NBD_REPLY_TYPE_NONE` and `NBD_REPLY_TYPE_ERROR`).
public enum StatusReply {
    /// Payload of an `NBD_REPLY_TYPE_ERROR` chunk without a message: the errno and a zero message length.
    public static let errorPayloadSize = 6

    /// The most bytes `write` needs in `style`.
    @inlinable
    public static func maxSize(_ style: ReplyStyle) -> Int {
        style == .simple ? ReplyHeader.simpleSize : style.chunkHeaderSize + errorPayloadSize
    }

    /// Writes the final reply to a request at `base`; returns its size. `error` 0 is a success. With
    /// structured replies a command that never carries data (`needsChunk` false) gets a simple reply,
    /// as the spec allows; READ and BLOCK_STATUS, and every command under extended headers, get a
    /// chunk: `NBD_REPLY_TYPE_NONE`, or `NBD_REPLY_TYPE_ERROR` without a message, flagged done.
    @inlinable
    @discardableResult
    public static func write(
        style: ReplyStyle, needsChunk: Bool, error: UInt32, cookie: UInt64, offset: UInt64, to base: UnsafeMutableRawPointer
    ) -> Int {
        if style == .simple || (style == .structured && !needsChunk) {
            ReplyHeader.writeSimple(error: error, cookie: cookie, to: base)
            return ReplyHeader.simpleSize
        }
        if error == 0 {
            return ReplyHeader.writeChunk(style: style, flags: .done, type: .none, cookie: cookie, offset: offset, payloadLength: 0, to: base)
        }
        let size = ReplyHeader.writeChunk(
            style: style, flags: .done, type: .error, cookie: cookie, offset: offset, payloadLength: UInt64(errorPayloadSize), to: base)
        BigEndian.store(error, base, size)
        BigEndian.store(UInt16(0), base, size + 4)
        return size + errorPayloadSize
    }
}
