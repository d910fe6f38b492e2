/// A driver in front of one child that changes some of what passes through it (`throttle`,
/// `blkdebug`, `raw`): whatever it does not implement goes to `child` unchanged.
///
/// Contract of the defaults:
/// - forwarded to the child: `length`, `filename`, `allocatedSize`, `features` (as
///   `inheritedByFilter`), `read`, `write`, `writeZeroes`, `discard`, `flush`, `blockStatus`,
///   `prefetch`, `resize`. They go through the child's `BlockNode`, so its emulation and live
///   policies still apply;
/// - not forwarded: `mappedBytes`, `mappedRuns` and `directTarget`, the paths on which data leaves
///   without passing through `read` or `write`. They keep the leaf defaults (nothing mapped, no
///   direct target), so no request goes around the filter; a filter that does nothing to data
///   (`raw`) implements them itself;
/// - not forwarded: `close` (the graph closes the child as a node of its own) and `debugEvent`
///   (the events raised on a node are that node's).
/// A filter on the data path stores its `features` (`child.features.inheritedByFilter` at init):
/// the default computes them again on every call.
public protocol FilterDriver: BlockDriver {
    /// The node every request the filter does not handle goes to.
    var child: BlockNode { get }
}

extension FilterDriver {
    /// Default: the child's capabilities, without the behaviours that belong to the child's driver.
    @inlinable public var features: DriverFeatures { child.features.inheritedByFilter }
    /// Default: the child's size.
    @inlinable public var length: UInt64 { child.length }
    /// Default: the child's image or device.
    @inlinable public var filename: String { child.driver.filename }
    /// Default: what the child occupies.
    @inlinable public var allocatedSize: UInt64? { child.driver.allocatedSize }

    /// Default: the child's bytes.
    @inlinable
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        try child.read(into: buffer, at: offset)
    }

    /// Default: written to the child.
    @inlinable
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        try child.write(buffer, at: offset, fua: fua)
    }

    /// Default: zeroed on the child.
    @inlinable
    public func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockError) {
        try child.writeZeroes(at: offset, length: length, flags: flags)
    }

    /// Default: discarded on the child.
    @inlinable
    public func discard(at offset: UInt64, length: UInt64) throws(BlockError) {
        try child.discard(at: offset, length: length)
    }

    /// Default: the child flushed.
    @inlinable
    public func flush() throws(BlockError) {
        try child.flush()
    }

    /// Default: the child's allocation.
    @inlinable
    public func blockStatus(at offset: UInt64, length: UInt64) throws(BlockError) -> [Extent] {
        try child.blockStatus(at: offset, length: length)
    }

    /// Default: the hint passed on to the child.
    @inlinable
    public func prefetch(at offset: UInt64, length: UInt64) throws(BlockError) {
        try child.prefetch(at: offset, length: length)
    }

    /// Default: the child resized.
    @inlinable
    public func resize(to length: UInt64) throws(BlockError) {
        try child.resize(to: length)
    }
}
