#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A node of the block graph: a driver instance with a name, its children, and the core's emulation
/// of what the driver does not do itself (FUA, zero-writes, alignment).
public final class BlockNode: Sendable {
    /// The node's name (`node-name`).
    public let name: String
    /// The driver behind it.
    public let driver: any BlockDriver
    /// Children by role (`file`, `backing`, ...).
    public let children: [(role: String, node: BlockNode)]
    /// True when no write may reach the node.
    public let readOnly: Bool
    /// The settings common to every node (cache mode, discard, aio) it was opened with.
    public let common: CommonNodeOptions
    private let alignmentLock: ReadWriteLock?
    private let highestWrite = Atomic<UInt64>(0)

    /// The end of the furthest write so far (`wr_highest_offset` of the node).
    public var highestWriteOffset: UInt64 { highestWrite.load(ordering: .relaxed) }

    /// Creates a node over an opened driver.
    public init(
        name: String, driver: any BlockDriver, children: [(role: String, node: BlockNode)] = [], readOnly: Bool,
        common: CommonNodeOptions = CommonNodeOptions()
    ) {
        self.name = name
        self.common = common
        self.driver = driver
        self.children = children
        self.readOnly = readOnly
        self.alignmentLock = driver.features.alignment > 1 ? ReadWriteLock() : nil
    }

    /// The node's size in bytes.
    public var length: UInt64 { driver.length }
    /// The driver's capabilities.
    public var features: DriverFeatures { driver.features }

    /// Reads `buffer.count` bytes at `offset`.
    @inline(__always)
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        assert(offset + UInt64(buffer.count) <= length)
        if alignmentLock == nil || isAligned(offset, buffer.count, buffer.baseAddress) {
            try driver.read(into: buffer, at: offset)
        } else {
            try bounceRead(into: buffer, at: offset)
        }
    }

    /// The bytes at `offset` as memory only the kernel may read (see `BlockDriver.mappedBytes`), or nil.
    @inline(__always)
    public func mappedBytes(at offset: UInt64, length count: Int) -> UnsafeRawPointer? {
        assert(offset + UInt64(count) <= length)
        return driver.mappedBytes(at: offset, length: count)
    }

    /// Where a request for this range, with its data at `buffer`, can be sent straight to a file,
    /// or nil when it must go through `read`/`write` (no such path, or it needs bouncing).
    @inline(__always)
    public func directTarget(at offset: UInt64, length count: Int, buffer: UnsafeRawPointer) -> DirectTarget? {
        if alignmentLock != nil && !isAligned(offset, count, buffer) { return nil }
        return driver.directTarget(at: offset, length: count)
    }

    /// Writes `buffer` at `offset`; durable on return when `fua` is set.
    @inline(__always)
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        assert(!readOnly && offset + UInt64(buffer.count) <= length)
        if let lock = alignmentLock {
            if isAligned(offset, buffer.count, buffer.baseAddress) {
                lock.lockShared()
                defer { lock.unlock() }
                try driverWrite(buffer, at: offset, fua: fua)
            } else {
                lock.lockExclusive()
                defer { lock.unlock() }
                try readModifyWrite(buffer, at: offset, fua: fua)
            }
        } else {
            try driverWrite(buffer, at: offset, fua: fua)
        }
        highestWrite.max(offset + UInt64(buffer.count), ordering: .relaxed)
    }

    /// Makes a range read as zeroes; with `.fastOnly`, fails with `ENOTSUP` unless the driver can do it cheaply.
    public func writeZeroes(at offset: UInt64, length count: UInt64, flags: ZeroFlags) throws(BlockError) {
        assert(!readOnly && offset + count <= length)
        defer { highestWrite.max(offset + count, ordering: .relaxed) }
        let features = driver.features
        if features.fastZero && isAligned(offset, Int(clamping: count), nil) {
            var driverFlags = flags
            if features.fua == .emulated { driverFlags.remove(.fua) }
            try driver.writeZeroes(at: offset, length: count, flags: driverFlags)
            if flags.contains(.fua) && features.fua == .emulated { try driver.flush() }
            return
        }
        if flags.contains(.fastOnly) { throw .notSupported("\(name): no fast zero-write") }
        var done: UInt64 = 0
        while done < count {
            let chunk = Int(min(count - done, UInt64(ZeroBlock.size)))
            try write(UnsafeRawBufferPointer(rebasing: ZeroBlock.bytes[0..<chunk]), at: offset + done, fua: false)
            done += UInt64(chunk)
        }
        if flags.contains(.fua) { try flush() }
    }

    /// Discards a range where the driver supports it; otherwise does nothing, which the spec allows.
    public func discard(at offset: UInt64, length count: UInt64) throws(BlockError) {
        assert(!readOnly && offset + count <= length)
        guard driver.features.discard else { return }
        let align = UInt64(driver.features.alignment)
        // Only whole aligned blocks can be discarded; the unaligned edges are left as they are.
        let start = (offset + align - 1) / align * align
        let end = (offset + count) / align * align
        guard end > start else { return }
        try driver.discard(at: start, length: end - start)
    }

    /// Makes every completed write durable.
    public func flush() throws(BlockError) {
        guard !readOnly, driver.features.needsFlush else { return }
        try driver.flush()
    }

    /// Describes allocation from `offset`, at most `length` bytes, merged into as few extents as possible.
    public func blockStatus(at offset: UInt64, length count: UInt64) throws(BlockError) -> [Extent] {
        assert(offset + count <= length)
        return try driver.blockStatus(at: offset, length: count)
    }

    /// Changes the node's size; new connections see the new size.
    public func resize(to newLength: UInt64) throws(BlockError) {
        guard !readOnly else { throw .notPermitted("node '\(name)' is read-only") }
        guard newLength % UInt64(driver.features.alignment) == 0 else {
            throw .invalid("the size must be a multiple of \(driver.features.alignment)")
        }
        try driver.resize(to: newLength)
    }

    /// Hints that a range will be read soon.
    public func prefetch(at offset: UInt64, length count: UInt64) throws(BlockError) {
        try driver.prefetch(at: offset, length: count)
    }

    // MARK: - Emulation

    @inline(__always)
    private func driverWrite(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        if fua && driver.features.fua == .emulated {
            try driver.write(buffer, at: offset, fua: false)
            try driver.flush()
        } else {
            try driver.write(buffer, at: offset, fua: fua)
        }
    }

    private func isAligned(_ offset: UInt64, _ count: Int, _ address: UnsafeRawPointer?) -> Bool {
        let mask = driver.features.alignment - 1
        let addressBits = address.map { Int(bitPattern: $0) & mask } ?? 0
        return Int(truncatingIfNeeded: offset) & mask == 0 && count & mask == 0 && addressBits == 0
    }

    /// The aligned span covering a request, clamped to the node's end.
    private func alignedSpan(_ offset: UInt64, _ count: Int) -> (start: UInt64, count: Int) {
        let align = UInt64(driver.features.alignment)
        let start = offset / align * align
        let end = min((offset + UInt64(count) + align - 1) / align * align, (length + align - 1) / align * align)
        return (start, Int(end - start))
    }

    private func bounceRead(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        let span = alignedSpan(offset, buffer.count)
        let bounce = AlignedBuffer(capacity: span.count)
        try driver.read(into: UnsafeMutableRawBufferPointer(rebasing: bounce.bytes[0..<span.count]), at: span.start)
        buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: bounce.bytes[Int(offset - span.start)..<Int(offset - span.start) + buffer.count]))
    }

    private func readModifyWrite(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        let span = alignedSpan(offset, buffer.count)
        let bounce = AlignedBuffer(capacity: span.count)
        let whole = UnsafeMutableRawBufferPointer(rebasing: bounce.bytes[0..<span.count])
        try driver.read(into: whole, at: span.start)
        UnsafeMutableRawBufferPointer(rebasing: whole[Int(offset - span.start)...]).copyMemory(from: buffer)
        try driverWrite(UnsafeRawBufferPointer(whole), at: span.start, fua: fua)
    }
}

/// A pthread reader-writer lock: shared for aligned writes, exclusive for read-modify-write.
final class ReadWriteLock: @unchecked Sendable {
    private let lock = UnsafeMutablePointer<pthread_rwlock_t>.allocate(capacity: 1)
    init() { pthread_rwlock_init(lock, nil) }
    func lockShared() { pthread_rwlock_rdlock(lock) }
    func lockExclusive() { pthread_rwlock_wrlock(lock) }
    func unlock() { pthread_rwlock_unlock(lock) }
    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }
}
