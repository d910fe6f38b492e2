import BlockCore
import Sockets
import NBDProtocol
import Synchronization
import LogOptionsClock

/// One export of the NBD server: a name clients ask for, and the device (BlockBackend) it serves.
public final class NBDExport: Sendable {
    /// The export's id (`--export id=`).
    public let id: String
    /// The name clients ask for.
    public let name: String
    /// Text shown by `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION`.
    public let description: String?
    /// The device served: its medium, tray and statistics.
    public let backend: BlockBackend
    /// True when clients may write.
    public let writable: Bool
    /// True when clients may change the size with `NBD_CMD_RESIZE` (experimental `x-resize`).
    public let resizable: Bool
    /// The meta contexts clients may select (`qemu:allocation-depth` only when the export asks for it).
    public let metaContexts: [MetaContext]
    /// Whether multi-conn may be advertised (it is, when the node makes it safe); blockd-nbd turns it off
    /// with `-e 1`, as qemu-nbd does.
    public let multiConn: Bool

    /// Largest read or write payload accepted (`NBD_INFO_BLOCK_SIZE` maximum).
    public static let maxPayload = 32 << 20

    /// Creates an export of a device; `writable` needs a writable medium (when one is inserted).
    public init(
        id: String, name: String, description: String?, backend: BlockBackend, writable: Bool, resizable: Bool = false,
        metaContexts: [MetaContext] = [.baseAllocation], multiConn: Bool = true
    ) throws(OptionError) {
        if writable, let node = backend.medium, node.readOnly {
            throw OptionError("export '\(id)': node '\(node.name)' is read-only; it cannot be exported with writable=on")
        }
        self.id = id
        self.name = name
        self.description = description
        self.backend = backend
        self.writable = writable
        self.resizable = resizable
        self.metaContexts = metaContexts
        self.multiConn = multiConn
        for context in metaContexts { context.bitmap?.retain() }
    }

    deinit {
        // The bitmaps stay busy until the last connection lets go of the export.
        for context in metaContexts { context.bitmap?.release() }
    }

    /// The node requests reach now: nil while the device has no medium or its tray is open.
    public var medium: BlockNode? { backend.current().medium?.node }

    /// The transmission flags for a connection that negotiated `style`, with `medium` inserted.
    public func transmissionFlags(style: ReplyStyle, medium: BlockNode) -> TransmissionFlags {
        let features = medium.features
        var flags: TransmissionFlags = [.hasFlags, .sendFlush, .sendFUA, .sendCache]
        if writable && !medium.readOnly {
            flags.formUnion([.sendTrim, .sendWriteZeroes])
            if features.fastZero { flags.insert(.sendFastZero) }
            if resizable { flags.insert(.sendResize) }
        } else {
            flags.insert(.readOnly)
        }
        if style != .simple { flags.insert(.sendDF) }
        if multiConn && features.multiConnSafe { flags.insert(.canMultiConn) }
        if features.rotational { flags.insert(.rotational) }
        return flags
    }

    /// The minimum, preferred and maximum block sizes advertised for `medium`.
    public static func blockSizes(_ medium: BlockNode) -> (minimum: UInt32, preferred: UInt32, maximum: UInt32) {
        (1, UInt32(max(4096, medium.features.alignment)), UInt32(NBDExport.maxPayload))
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
