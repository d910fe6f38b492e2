/// Server handshake flags, sent after `IHAVEOPT` (doc/proto.md § Handshake flags).
public struct HandshakeFlags: OptionSet, Sendable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// `NBD_FLAG_FIXED_NEWSTYLE`.
    public static let fixedNewstyle = HandshakeFlags(rawValue: 1 << 0)
    /// `NBD_FLAG_NO_ZEROES`.
    public static let noZeroes = HandshakeFlags(rawValue: 1 << 1)
}

/// Client flags, the client's answer to the handshake flags.
public struct ClientFlags: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// `NBD_FLAG_C_FIXED_NEWSTYLE`.
    public static let fixedNewstyle = ClientFlags(rawValue: 1 << 0)
    /// `NBD_FLAG_C_NO_ZEROES`.
    public static let noZeroes = ClientFlags(rawValue: 1 << 1)
    /// Every flag this server understands; any other bit means the client must be dropped.
    public static let known: ClientFlags = [.fixedNewstyle, .noZeroes]
}

/// Per-export transmission flags (doc/proto.md § Transmission flags).
public struct TransmissionFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// `NBD_FLAG_HAS_FLAGS`.
    public static let hasFlags = TransmissionFlags(rawValue: 1 << 0)
    /// `NBD_FLAG_READ_ONLY`.
    public static let readOnly = TransmissionFlags(rawValue: 1 << 1)
    /// `NBD_FLAG_SEND_FLUSH`.
    public static let sendFlush = TransmissionFlags(rawValue: 1 << 2)
    /// `NBD_FLAG_SEND_FUA`.
    public static let sendFUA = TransmissionFlags(rawValue: 1 << 3)
    /// `NBD_FLAG_ROTATIONAL`.
    public static let rotational = TransmissionFlags(rawValue: 1 << 4)
    /// `NBD_FLAG_SEND_TRIM`.
    public static let sendTrim = TransmissionFlags(rawValue: 1 << 5)
    /// `NBD_FLAG_SEND_WRITE_ZEROES`.
    public static let sendWriteZeroes = TransmissionFlags(rawValue: 1 << 6)
    /// `NBD_FLAG_SEND_DF`.
    public static let sendDF = TransmissionFlags(rawValue: 1 << 7)
    /// `NBD_FLAG_CAN_MULTI_CONN`.
    public static let canMultiConn = TransmissionFlags(rawValue: 1 << 8)
    /// `NBD_FLAG_SEND_RESIZE` (experimental resize extension).
    public static let sendResize = TransmissionFlags(rawValue: 1 << 9)
    /// `NBD_FLAG_SEND_CACHE`.
    public static let sendCache = TransmissionFlags(rawValue: 1 << 10)
    /// `NBD_FLAG_SEND_FAST_ZERO`.
    public static let sendFastZero = TransmissionFlags(rawValue: 1 << 11)
    /// `NBD_FLAG_BLOCK_STAT_PAYLOAD`.
    public static let blockStatusPayload = TransmissionFlags(rawValue: 1 << 12)
}

/// Flags carried in a transmission request (doc/proto.md § Command flags).
public struct CommandFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// `NBD_CMD_FLAG_FUA`.
    public static let fua = CommandFlags(rawValue: 1 << 0)
    /// `NBD_CMD_FLAG_NO_HOLE`.
    public static let noHole = CommandFlags(rawValue: 1 << 1)
    /// `NBD_CMD_FLAG_DF`.
    public static let dontFragment = CommandFlags(rawValue: 1 << 2)
    /// `NBD_CMD_FLAG_REQ_ONE`.
    public static let reqOne = CommandFlags(rawValue: 1 << 3)
    /// `NBD_CMD_FLAG_FAST_ZERO`.
    public static let fastZero = CommandFlags(rawValue: 1 << 4)
    /// `NBD_CMD_FLAG_PAYLOAD_LEN`.
    public static let payloadLength = CommandFlags(rawValue: 1 << 5)
}

/// Flags of a structured or extended reply chunk.
public struct ReplyFlags: OptionSet, Sendable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// `NBD_REPLY_FLAG_DONE`: the last chunk of this reply.
    public static let done = ReplyFlags(rawValue: 1 << 0)
}

/// Flags of one extent in the `base:allocation` context (doc/proto.md § Metadata querying).
public struct AllocationFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// `NBD_STATE_HOLE`: the range is not allocated.
    public static let hole = AllocationFlags(rawValue: 1 << 0)
    /// `NBD_STATE_ZERO`: the range reads as zeroes.
    public static let zero = AllocationFlags(rawValue: 1 << 1)
}
