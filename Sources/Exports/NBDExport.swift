import BlockCore
import Sockets
import NBDProtocol
import Synchronization

/// One export of the NBD server: a name clients ask for, and the node it serves.
public final class NBDExport: Sendable {
    /// The export's id (`--export id=`).
    public let id: String
    /// The name clients ask for.
    public let name: String
    /// Text shown by `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION`.
    public let description: String?
    /// The node served.
    public let node: BlockNode
    /// True when clients may write.
    public let writable: Bool
    /// I/O accounting of every client of this export (query-blockstats).
    public let stats: BlockStats

    /// Largest read or write payload accepted (`NBD_INFO_BLOCK_SIZE` maximum).
    public static let maxPayload = 32 << 20

    /// Creates an export; `writable` needs a writable node.
    public init(
        id: String, name: String, description: String?, node: BlockNode, writable: Bool, stats: BlockStats = BlockStats()
    ) throws(OptionError) {
        guard !(writable && node.readOnly) else {
            throw OptionError("export '\(id)': node '\(node.name)' is read-only; it cannot be exported with writable=on")
        }
        self.id = id
        self.name = name
        self.description = description
        self.node = node
        self.writable = writable
        self.stats = stats
    }

    /// Size in bytes, as the node has it now.
    public var size: UInt64 { node.length }

    /// The transmission flags for a connection that negotiated `style`.
    public func transmissionFlags(style: ReplyStyle) -> TransmissionFlags {
        let features = node.features
        var flags: TransmissionFlags = [.hasFlags, .sendFlush, .sendFUA, .sendCache]
        if writable {
            flags.formUnion([.sendTrim, .sendWriteZeroes])
            if features.fastZero { flags.insert(.sendFastZero) }
        } else {
            flags.insert(.readOnly)
        }
        if style != .simple { flags.insert(.sendDF) }
        if features.multiConnSafe { flags.insert(.canMultiConn) }
        if features.rotational { flags.insert(.rotational) }
        return flags
    }

    /// The minimum, preferred and maximum block sizes advertised.
    public var blockSizes: (minimum: UInt32, preferred: UInt32, maximum: UInt32) {
        (1, UInt32(max(4096, node.features.alignment)), UInt32(NBDExport.maxPayload))
    }
}

/// The set of exports, looked up by name during negotiation.
public final class ExportTable: Sendable {
    private let exports = Mutex<[NBDExport]>([])

    /// Creates an empty table.
    public init() {}

    /// Adds an export; fails when its id or name is taken.
    public func add(_ export: NBDExport) throws(OptionError) {
        let clash = exports.withLock { list -> String? in
            if list.contains(where: { $0.id == export.id }) { return "an export with id '\(export.id)' already exists" }
            if list.contains(where: { $0.name == export.name }) { return "an export named '\(export.name)' already exists" }
            list.append(export)
            return nil
        }
        if let clash { throw OptionError(clash) }
    }

    /// Removes the export with that id; returns it.
    @discardableResult
    public func remove(id: String) -> NBDExport? {
        exports.withLock { list in
            guard let index = list.firstIndex(where: { $0.id == id }) else { return nil }
            return list.remove(at: index)
        }
    }

    /// The export with that id.
    public func export(id: String) -> NBDExport? {
        exports.withLock { list in list.first { $0.id == id } }
    }

    /// The export clients reach by `name`.
    public func export(named name: String) -> NBDExport? {
        exports.withLock { list in list.first { $0.name == name } }
    }

    /// Every export, in the order added.
    public var all: [NBDExport] { exports.withLock { $0 } }
}
