/// Magic numbers that frame every NBD message (doc/proto.md § Handshake, § Transmission).
public enum NBDMagic {
    /// `NBDMAGIC`, the first 8 bytes the server sends.
    public static let initPassword: UInt64 = 0x4e42_444d_4147_4943
    /// `IHAVEOPT`, newstyle handshake magic; also prefixes every client option.
    public static let option: UInt64 = 0x4948_4156_454f_5054
    /// Magic of every option reply (fixed newstyle).
    public static let optionReply: UInt64 = 0x0003_e889_0455_65a9
    /// `NBD_REQUEST_MAGIC`, a compact (32-byte-less) request header.
    public static let request: UInt32 = 0x2560_9513
    /// `NBD_EXTENDED_REQUEST_MAGIC`, a 32-byte request header (extended headers).
    public static let extendedRequest: UInt32 = 0x21e4_1c71
    /// `NBD_SIMPLE_REPLY_MAGIC`.
    public static let simpleReply: UInt32 = 0x6744_6698
    /// `NBD_STRUCTURED_REPLY_MAGIC`.
    public static let structuredReply: UInt32 = 0x668e_33ef
    /// `NBD_EXTENDED_REPLY_MAGIC`.
    public static let extendedReply: UInt32 = 0x6e8a_278c
}
