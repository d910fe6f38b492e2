import BlockCore
import LogOptionsClock

/// The `raw` format driver: the child's bytes as they are, optionally a window (`offset`, `size`) of them.
/// A filter (`FilterDriver`) that moves offsets into the window; as it leaves the data alone, its
/// mapped and direct paths are the child's.
public final class RawDriver: FilterDriver {
    public let driverName = "raw"
    public let features: DriverFeatures
    public let child: BlockNode
    private let start: UInt64
    private let windowSize: UInt64?

    /// Creates a raw view of `child` from `offset`, `size` bytes long (to the child's end when nil).
    public init(child: BlockNode, offset: UInt64, size: UInt64?) {
        self.child = child
        self.start = offset
        self.windowSize = size
        self.features = child.features.inheritedByFilter
    }

    public var length: UInt64 {
        windowSize ?? (child.length > start ? child.length - start : 0)
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        child.debugEvent(.readAio)
        try child.read(into: buffer, at: start + offset)
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        child.debugEvent(.writeAio)
        try child.write(buffer, at: start + offset, fua: fua)
    }

    public func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockError) {
        try child.writeZeroes(at: start + offset, length: length, flags: flags)
    }

    public func discard(at offset: UInt64, length: UInt64) throws(BlockError) {
        try child.discard(at: start + offset, length: length)
    }

    public func blockStatus(at offset: UInt64, length: UInt64) throws(BlockError) -> [Extent] {
        try child.blockStatus(at: start + offset, length: length)
    }

    public func directTarget(at offset: UInt64, length: Int) -> DirectTarget? {
        child.directTarget(at: start + offset, length: length)
    }

    public func mappedBytes(at offset: UInt64, length: Int) -> UnsafeRawPointer? {
        child.mappedBytes(at: start + offset, length: length)
    }

    public func mappedRuns(at offset: UInt64, length: Int, limit: Int, into runs: inout [UnsafeRawBufferPointer]) -> Bool {
        child.mappedRuns(at: start + offset, length: length, limit: limit, into: &runs)
    }

    public func resize(to newLength: UInt64) throws(BlockError) {
        guard windowSize == nil else { throw .notSupported("a raw node with a fixed 'size' cannot be resized") }
        try child.resize(to: start + newLength)
    }

    public func prefetch(at offset: UInt64, length: UInt64) throws(BlockError) {
        try child.prefetch(at: start + offset, length: length)
    }

    /// Opens `raw` nodes.
    public static let opener: DriverOpener = { options, context throws(OptionError) in
        guard let child = try context.child("file", of: options) else {
            throw OptionError("\(options.context): parameter 'file' is missing")
        }
        let offset = try options.size("offset") ?? 0
        let size = try options.size("size")
        let align = UInt64(child.features.alignment)
        guard offset % align == 0, (size ?? 0) % align == 0 else {
            throw OptionError("\(options.context): offset and size must be multiples of \(align)")
        }
        guard offset <= child.length, size ?? 0 <= child.length - offset else {
            throw OptionError("\(options.context): offset \(offset) + size \(size ?? 0) is past the end of '\(child.name)' (\(child.length) bytes)")
        }
        try context.requireWritable([child], of: options)
        return OpenedDriver(driver: RawDriver(child: child, offset: offset, size: size), children: [("file", child)])
    }
}
