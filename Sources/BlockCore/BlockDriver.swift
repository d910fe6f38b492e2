/// How a driver honours force-unit-access on writes.
public enum FUASupport: Sendable {
    /// The driver makes a FUA write durable itself.
    case native
    /// The core emulates FUA with a flush after the write.
    case emulated
}

/// What a driver can do, declared as data so the core can emulate the rest (style: "declare capabilities").
public struct DriverFeatures: Sendable {
    /// FUA handling.
    public var fua: FUASupport = .emulated
    /// The driver zeroes ranges without writing buffers (so `fast-zero` can succeed).
    public var fastZero = false
    /// The driver can deallocate ranges (discard is not a no-op).
    public var discard = false
    /// The driver's data is volatile until flushed (flush is meaningful).
    public var needsFlush = true
    /// The medium is rotational (for `NBD_FLAG_ROTATIONAL`).
    public var rotational = false
    /// Concurrent connections see each other's completed writes, and a flush on one covers all.
    public var multiConnSafe = true
    /// Byte alignment of offsets, lengths and buffers the driver requires (1: none).
    public var alignment: Int = 1
    /// Largest single transfer the driver accepts.
    public var maxTransfer: Int = 32 << 20
    /// The driver reports allocation (not everything as data).
    public var blockStatus = false
    /// The driver acts on `debugEvent` (blkdebug); the node calls it only when this is set, so
    /// raising an event on any other node costs one branch. A filter copies its child's features
    /// through `inheritedByFilter`, which clears this.
    public var debugEvents = false
    /// A write threshold set on this node is measured on its `file` child instead, in the child's
    /// offsets (a format whose guest offsets are not where the data lands, such as qcow2: thin
    /// provisioning watches the host offset). The event still names this node. Cleared by
    /// `inheritedByFilter`.
    public var writeThresholdOnFile = false

    /// Creates the default features: emulated FUA, no fast zero, no discard.
    public init() {}

    /// What a filter over a node with these features can do: the same capabilities, without the
    /// behaviours that belong to the driver declaring them (`debugEvents`, `writeThresholdOnFile`).
    public var inheritedByFilter: DriverFeatures {
        var features = self
        features.debugEvents = false
        features.writeThresholdOnFile = false
        return features
    }
}

/// Flags of a zero-write.
public struct ZeroFlags: OptionSet, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// The range may be deallocated instead of written (the opposite of `NBD_CMD_FLAG_NO_HOLE`).
    public static let mayUnmap = ZeroFlags(rawValue: 1 << 0)
    /// Fail with `ENOTSUP` rather than fall back to writing zero buffers (`NBD_CMD_FLAG_FAST_ZERO`).
    public static let fastOnly = ZeroFlags(rawValue: 1 << 1)
    /// Durable before returning.
    public static let fua = ZeroFlags(rawValue: 1 << 2)
}

/// A block driver: a format, protocol or filter that turns byte ranges into storage operations.
///
/// Contract — what the core guarantees on entry to every operation:
/// - `offset + length <= length of the node` (checked at the edge, asserted in the node);
/// - offsets, lengths and buffer addresses are multiples of `features.alignment`;
/// - lengths are at most `features.maxTransfer` for reads and writes;
/// - writes, zero-writes and discards never reach a read-only node;
/// - `fua` is passed only when `features.fua == .native`; `.fastOnly` zero-writes reach the driver
///   only when `features.fastZero` is set.
/// Operations may be called concurrently from several threads; the driver serialises what it must.
/// What the driver returns: nothing on success; a `BlockError` whose errno maps onto the client's
/// protocol (`EIO`, `ENOSPC`, `EPERM`, `EINVAL`, `ENOTSUP`) on failure, never a partial success.
public protocol BlockDriver: AnyObject, Sendable {
    /// The driver's name as `--blockdev driver=` spells it.
    var driverName: String { get }
    /// The capabilities the core relies on.
    var features: DriverFeatures { get }
    /// Current size in bytes.
    var length: UInt64 { get }
    /// The name of the image or device behind the node, as query commands show it.
    var filename: String { get }
    /// Bytes the image occupies on its storage, when known (`actual-size`).
    var allocatedSize: UInt64? { get }

    /// Fills `buffer` with the bytes at `offset`.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError)
    /// Writes `buffer` at `offset`; durable on return when `fua` is set.
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError)
    /// Makes `length` bytes at `offset` read as zeroes, without a data buffer.
    func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockError)
    /// Tells the driver a range is no longer needed; contents afterwards are unspecified.
    func discard(at offset: UInt64, length: UInt64) throws(BlockError)
    /// Makes every completed write durable.
    func flush() throws(BlockError)
    /// Describes allocation from `offset` for at most `length` bytes; at least one extent,
    /// together covering a prefix of the range.
    func blockStatus(at offset: UInt64, length: UInt64) throws(BlockError) -> [Extent]
    /// Hints that a range will be read soon.
    func prefetch(at offset: UInt64, length: UInt64) throws(BlockError)
    /// The node's current bytes at `offset` as read-only memory the caller may hand to the kernel
    /// (for `sendmsg`) but must not touch itself, or nil when the driver cannot map them.
    /// The memory stays valid until `close`; it always reflects completed writes.
    func mappedBytes(at offset: UInt64, length: Int) -> UnsafeRawPointer?
    /// Like `mappedBytes`, for a range that lies in several places (a qcow2 image's clusters, its
    /// backing file): appends the pieces in order, at most `limit` of them, and returns true, or
    /// returns false (appending nothing that counts) when some piece cannot be mapped.
    func mappedRuns(at offset: UInt64, length: Int, limit: Int, into runs: inout [UnsafeRawBufferPointer]) -> Bool
    /// Where a read or write of this range can be sent straight to a file (for `aio=native`), or nil.
    func directTarget(at offset: UInt64, length: Int) -> DirectTarget?
    /// Changes the size to `length` bytes (growing adds zeroes).
    func resize(to length: UInt64) throws(BlockError)
    /// Reacts to a blkdebug event raised on this node (see `BlockNode.debugEvent`); called only when
    /// `features.debugEvents` is set. Must not block for long: it runs inside the I/O path.
    func debugEvent(_ event: BlkdebugEvent)
    /// Takes the node's dirty bitmaps when the node is made: a driver that stores bitmaps (qcow2)
    /// adds those of its image and stores the persistent ones at close.
    func attachBitmaps(_ bitmaps: DirtyBitmapSet, nodeName: String)
    /// Why a persistent bitmap with this name and granularity cannot be stored in this node, in
    /// QEMU's words, or nil when it can.
    func persistentBitmapProblem(name: String, granularity: UInt64, nodeName: String) -> String?
    /// Releases the driver's resources; no call follows.
    func close()
}

extension BlockDriver {
    /// Default: a hint with no effect.
    public func prefetch(at offset: UInt64, length: UInt64) throws(BlockError) {}
    /// Default: a pseudo-protocol name such as `null-co://`.
    public var filename: String { "\(driverName)://" }
    /// Default: unknown.
    public var allocatedSize: UInt64? { nil }
    /// Default: no direct path.
    public func directTarget(at offset: UInt64, length: Int) -> DirectTarget? { nil }
    /// Default: nothing is mapped.
    public func mappedBytes(at offset: UInt64, length: Int) -> UnsafeRawPointer? { nil }
    /// Default: the one piece `mappedBytes` gives.
    public func mappedRuns(at offset: UInt64, length: Int, limit: Int, into runs: inout [UnsafeRawBufferPointer]) -> Bool {
        guard limit > 0, let base = mappedBytes(at: offset, length: length) else { return false }
        runs.append(UnsafeRawBufferPointer(start: base, count: length))
        return true
    }
    /// Default: everything is data.
    public func blockStatus(at offset: UInt64, length: UInt64) throws(BlockError) -> [Extent] {
        [.data(length)]
    }
    /// Default: discard is a no-op, which the spec allows.
    public func discard(at offset: UInt64, length: UInt64) throws(BlockError) {}
    /// Default: zero-writes are done by the core with zero buffers, never fast.
    public func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockError) {
        throw .notSupported("\(driverName) has no native zero-write")
    }
    /// Default: the size is fixed.
    public func resize(to length: UInt64) throws(BlockError) {
        throw .notSupported("\(driverName) nodes cannot be resized")
    }
    /// Default: events mean nothing to this driver.
    public func debugEvent(_ event: BlkdebugEvent) {}
    /// Default: nothing to release.
    public func close() {}
    /// Default: bitmaps live only in memory.
    public func attachBitmaps(_ bitmaps: DirtyBitmapSet, nodeName: String) {}
    /// Default: persistent bitmaps cannot be stored.
    public func persistentBitmapProblem(name: String, granularity: UInt64, nodeName: String) -> String? {
        "Can't store persistent bitmaps to \(nodeName): Operation not supported"
    }
}
