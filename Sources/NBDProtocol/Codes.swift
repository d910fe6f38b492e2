/// Handshake option codes (doc/proto.md § Option types).
public enum NBDOption: UInt32, Sendable {
    /// `NBD_OPT_EXPORT_NAME`.
    case exportName = 1
    /// `NBD_OPT_ABORT`.
    case abort = 2
    /// `NBD_OPT_LIST`.
    case list = 3
    /// `NBD_OPT_PEEK_EXPORT` (withdrawn).
    case peekExport = 4
    /// `NBD_OPT_STARTTLS`.
    case startTLS = 5
    /// `NBD_OPT_INFO`.
    case info = 6
    /// `NBD_OPT_GO`.
    case go = 7
    /// `NBD_OPT_STRUCTURED_REPLY`.
    case structuredReply = 8
    /// `NBD_OPT_LIST_META_CONTEXT`.
    case listMetaContext = 9
    /// `NBD_OPT_SET_META_CONTEXT`.
    case setMetaContext = 10
    /// `NBD_OPT_EXTENDED_HEADERS`.
    case extendedHeaders = 11
}

/// Option reply types, successes and errors (doc/proto.md § Option reply types).
public enum OptionReplyType: UInt32, Sendable {
    /// `NBD_REP_ACK`.
    case ack = 1
    /// `NBD_REP_SERVER`.
    case server = 2
    /// `NBD_REP_INFO`.
    case info = 3
    /// `NBD_REP_META_CONTEXT`.
    case metaContext = 4
    /// `NBD_REP_ERR_UNSUP`.
    case errUnsupported = 0x8000_0001
    /// `NBD_REP_ERR_POLICY`.
    case errPolicy = 0x8000_0002
    /// `NBD_REP_ERR_INVALID`.
    case errInvalid = 0x8000_0003
    /// `NBD_REP_ERR_PLATFORM`.
    case errPlatform = 0x8000_0004
    /// `NBD_REP_ERR_TLS_REQD`.
    case errTLSRequired = 0x8000_0005
    /// `NBD_REP_ERR_UNKNOWN`: no such export.
    case errUnknown = 0x8000_0006
    /// `NBD_REP_ERR_SHUTDOWN`.
    case errShutdown = 0x8000_0007
    /// `NBD_REP_ERR_BLOCK_SIZE_REQD`.
    case errBlockSizeRequired = 0x8000_0008
    /// `NBD_REP_ERR_TOO_BIG`.
    case errTooBig = 0x8000_0009
    /// `NBD_REP_ERR_EXT_HEADER_REQD`.
    case errExtendedHeaderRequired = 0x8000_000a
}

/// Information items of `NBD_REP_INFO` (doc/proto.md § NBD_OPT_INFO and NBD_OPT_GO).
public enum InfoType: UInt16, Sendable {
    /// `NBD_INFO_EXPORT`: size and transmission flags.
    case export = 0
    /// `NBD_INFO_NAME`.
    case name = 1
    /// `NBD_INFO_DESCRIPTION`.
    case description = 2
    /// `NBD_INFO_BLOCK_SIZE`.
    case blockSize = 3
}

/// Request types of the transmission phase (doc/proto.md § Request types).
public enum NBDCommand: UInt16, Sendable {
    /// `NBD_CMD_READ`.
    case read = 0
    /// `NBD_CMD_WRITE`.
    case write = 1
    /// `NBD_CMD_DISC`.
    case disconnect = 2
    /// `NBD_CMD_FLUSH`.
    case flush = 3
    /// `NBD_CMD_TRIM`.
    case trim = 4
    /// `NBD_CMD_CACHE`.
    case cache = 5
    /// `NBD_CMD_WRITE_ZEROES`.
    case writeZeroes = 6
    /// `NBD_CMD_BLOCK_STATUS`.
    case blockStatus = 7
    /// `NBD_CMD_RESIZE` (experimental).
    case resize = 8
}

/// Structured reply chunk types (doc/proto.md § Structured reply types).
public enum ReplyChunkType: UInt16, Sendable {
    /// `NBD_REPLY_TYPE_NONE`.
    case none = 0
    /// `NBD_REPLY_TYPE_OFFSET_DATA`.
    case offsetData = 1
    /// `NBD_REPLY_TYPE_OFFSET_HOLE`.
    case offsetHole = 2
    /// `NBD_REPLY_TYPE_BLOCK_STATUS`.
    case blockStatus = 5
    /// `NBD_REPLY_TYPE_BLOCK_STATUS_EXT`.
    case blockStatusExtended = 6
    /// `NBD_REPLY_TYPE_ERROR`.
    case error = 0x8001
    /// `NBD_REPLY_TYPE_ERROR_OFFSET`.
    case errorOffset = 0x8002
}

/// Error values on the wire; the spec fixes them regardless of the host's errno numbering.
public enum NBDError: UInt32, Sendable, Error {
    /// `NBD_EPERM`.
    case notPermitted = 1
    /// `NBD_EIO`.
    case io = 5
    /// `NBD_ENOMEM`.
    case noMemory = 12
    /// `NBD_EINVAL`.
    case invalid = 22
    /// `NBD_ENOSPC`.
    case noSpace = 28
    /// `NBD_EOVERFLOW`.
    case overflow = 75
    /// `NBD_ENOTSUP`.
    case notSupported = 95
    /// `NBD_ESHUTDOWN`.
    case shutdown = 108
}
