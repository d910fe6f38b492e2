/// The fixed 16-byte header of a client option (doc/proto.md § Fixed newstyle negotiation).
public struct OptionHeader: Sendable, Equatable {
    /// Size on the wire.
    public static let size = 16
    /// The option code as sent; `NBDOption(rawValue:)` may not know it.
    public var option: UInt32
    /// The length of the option data that follows.
    public var length: UInt32

    /// Creates a header from its fields.
    public init(option: UInt32, length: UInt32) {
        self.option = option
        self.length = length
    }

    /// Decodes 16 bytes; nil when the magic is not `IHAVEOPT`.
    public static func decode(_ bytes: [UInt8]) -> OptionHeader? {
        var reader = ByteReader(bytes)
        guard reader.read(UInt64.self) == NBDMagic.option,
              let option = reader.read(UInt32.self), let length = reader.read(UInt32.self) else { return nil }
        return OptionHeader(option: option, length: length)
    }

    /// Encodes the header (what a client sends).
    public func encode() -> [UInt8] {
        var writer = ByteWriter()
        writer.append(NBDMagic.option)
        writer.append(option)
        writer.append(length)
        return writer.bytes
    }
}

/// One option reply (doc/proto.md § Option reply types): a header and its data.
public struct OptionReply: Sendable, Equatable {
    /// The option being answered.
    public var option: UInt32
    /// The reply type code.
    public var type: OptionReplyType
    /// The reply data.
    public var data: [UInt8]

    /// Creates a reply.
    public init(option: UInt32, type: OptionReplyType, data: [UInt8] = []) {
        self.option = option
        self.type = type
        self.data = data
    }

    /// An error reply carrying a human-readable message.
    public static func error(_ type: OptionReplyType, option: UInt32, message: String) -> OptionReply {
        OptionReply(option: option, type: type, data: Array(message.utf8))
    }

    /// Encodes header and data.
    public func encode() -> [UInt8] {
        var writer = ByteWriter()
        writer.append(NBDMagic.optionReply)
        writer.append(option)
        writer.append(type.rawValue)
        writer.append(UInt32(data.count))
        writer.append(bytes: data)
        return writer.bytes
    }
}

/// The data of `NBD_OPT_INFO` and `NBD_OPT_GO`: an export name and the information items requested.
public struct InfoRequest: Sendable, Equatable {
    /// The export's name ("" is the default export).
    public var exportName: String
    /// Information types the client asked for (unknown ones included, as sent).
    public var requests: [UInt16]

    /// Creates a request.
    public init(exportName: String, requests: [UInt16]) {
        self.exportName = exportName
        self.requests = requests
    }

    /// Decodes option data; nil when the lengths are inconsistent.
    public static func decode(_ data: [UInt8]) -> InfoRequest? {
        var reader = ByteReader(data)
        guard let nameLength = reader.read(UInt32.self), nameLength <= 4096,
              let name = reader.readString(count: Int(nameLength)),
              let count = reader.read(UInt16.self) else { return nil }
        var requests: [UInt16] = []
        for _ in 0..<count {
            guard let item = reader.read(UInt16.self) else { return nil }
            requests.append(item)
        }
        guard reader.remaining == 0 else { return nil }
        return InfoRequest(exportName: name, requests: requests)
    }

    /// Encodes the option data (what a client sends).
    public func encode() -> [UInt8] {
        var writer = ByteWriter()
        writer.append(UInt32(exportName.utf8.count))
        writer.append(utf8: exportName)
        writer.append(UInt16(requests.count))
        for item in requests { writer.append(item) }
        return writer.bytes
    }
}

/// The data of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`.
public struct MetaContextRequest: Sendable, Equatable {
    /// The export the contexts are for.
    public var exportName: String
    /// The queries, such as `base:allocation` or `base:`.
    public var queries: [String]

    /// Creates a request.
    public init(exportName: String, queries: [String]) {
        self.exportName = exportName
        self.queries = queries
    }

    /// Decodes option data; nil when the lengths are inconsistent.
    public static func decode(_ data: [UInt8]) -> MetaContextRequest? {
        var reader = ByteReader(data)
        guard let nameLength = reader.read(UInt32.self), nameLength <= 4096,
              let name = reader.readString(count: Int(nameLength)),
              let count = reader.read(UInt32.self) else { return nil }
        var queries: [String] = []
        for _ in 0..<count {
            guard let length = reader.read(UInt32.self), length <= 4096,
                  let query = reader.readString(count: Int(length)) else { return nil }
            queries.append(query)
        }
        guard reader.remaining == 0 else { return nil }
        return MetaContextRequest(exportName: name, queries: queries)
    }

    /// Encodes the option data (what a client sends).
    public func encode() -> [UInt8] {
        var writer = ByteWriter()
        writer.append(UInt32(exportName.utf8.count))
        writer.append(utf8: exportName)
        writer.append(UInt32(queries.count))
        for query in queries {
            writer.append(UInt32(query.utf8.count))
            writer.append(utf8: query)
        }
        return writer.bytes
    }
}
