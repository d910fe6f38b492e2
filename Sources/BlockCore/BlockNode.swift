#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A node of the block graph: a driver instance with a name, its children, the core's emulation
/// of what the driver does not do itself (FUA, zero-writes, alignment), and the live policies of
/// the node (write threshold, detect-zeroes, blkdebug events; see BlockNode+Policies.swift).
public final class BlockNode: Sendable {
    /// The node's name (`node-name`).
    public let name: String
    /// The driver behind it.
    public let driver: any BlockDriver
    /// Children by role (`file`, `backing`, ...).
    public var children: [(role: String, node: BlockNode)] { childList.withLock { $0 } }
    private let childList: Mutex<[(role: String, node: BlockNode)]>
    /// True when no write may reach the node.
    public let readOnly: Bool
    /// The settings common to every node (cache mode, discard, aio) it was opened with.
    public let common: CommonNodeOptions
    private let alignmentLock: ReadWriteLock?
    private let highestWrite = Atomic<UInt64>(0)
    private let discardsSucceeded = Atomic<UInt64>(0)
    private let discardsFailed = Atomic<UInt64>(0)
    private let discardedBytes = Atomic<UInt64>(0)
    /// Where the node's events go.
    let events: BlockEventSink
    /// The live policies that are on (`PolicyBits`). Zero keeps every write on the plain path:
    /// a policy that is off costs this one load and branch.
    let policyBits: Atomic<UInt8>
    /// The write threshold measured on this node, 0 when none.
    let thresholdBytes = Atomic<UInt64>(0)
    /// The node named in the threshold event (this one, or the format node that delegated to it);
    /// the lock also orders changes of `policyBits`.
    let policyLock = Mutex<String>("")
    /// `DetectZeroes` as its raw value.
    let detectZeroesMode: Atomic<UInt8>
    /// The driver takes blkdebug events.
    let takesDebugEvents: Bool
    /// The `file` child when it takes blkdebug events (flush events are raised on it), else nil.
    let debugFile: BlockNode?
    /// The node's dirty bitmaps; writes, zero-writes and discards that reach the node mark the
    /// recording ones (see BlockNode+Bitmaps.swift).
    public let dirtyBitmaps = DirtyBitmapSet()
    /// The block job's hook around writes (`PolicyBits.writeHook` tells whether there is one).
    let hook = Mutex<(any WriteHook)?>(nil)

    /// The end of the furthest write so far (`wr_highest_offset` of the node).
    public var highestWriteOffset: UInt64 { highestWrite.load(ordering: .relaxed) }

    /// The discards that reached the driver: how many succeeded and failed, and the bytes of those
    /// that succeeded (QEMU's file driver counters, `discard-nb-ok` and the others).
    public var discardCounters: (succeeded: UInt64, failed: UInt64, bytes: UInt64) {
        (discardsSucceeded.load(ordering: .relaxed), discardsFailed.load(ordering: .relaxed), discardedBytes.load(ordering: .relaxed))
    }

    /// Creates a node over an opened driver.
    public init(
        name: String, driver: any BlockDriver, children: [(role: String, node: BlockNode)] = [], readOnly: Bool,
        common: CommonNodeOptions = CommonNodeOptions(), events: BlockEventSink = BlockEventSink()
    ) {
        self.name = name
        self.common = common
        self.driver = driver
        self.childList = Mutex(children)
        self.readOnly = readOnly
        self.alignmentLock = driver.features.alignment > 1 ? ReadWriteLock() : nil
        self.events = events
        self.takesDebugEvents = driver.features.debugEvents
        self.debugFile = children.first { $0.role == "file" && $0.node.takesDebugEvents }?.node
        self.detectZeroesMode = Atomic(common.detectZeroes.rawValue)
        var bits: UInt8 = driver.features.debugEvents ? PolicyBits.debugEvents : 0
        if common.detectZeroes != .off { bits |= PolicyBits.detectZeroes }
        self.policyBits = Atomic(bits)
        attachDirtyBitmaps()
    }

    /// Points the child `role` at `node` (nil: removes it), for a live graph change (a job's end,
    /// a snapshot); the driver is changed first by the caller.
    public func setChild(_ role: String, to node: BlockNode?) {
        childList.withLock { list in
            list.removeAll { $0.role == role }
            if let node { list.append((role, node)) }
        }
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

    /// The bytes of a range as mapped pieces in order (see `BlockDriver.mappedRuns`); false when some
    /// piece cannot be mapped.
    public func mappedRuns(at offset: UInt64, length count: Int, limit: Int, into runs: inout [UnsafeRawBufferPointer]) -> Bool {
        assert(offset + UInt64(count) <= length)
        return driver.mappedRuns(at: offset, length: count, limit: limit, into: &runs)
    }

    /// Where a request for this range, with its data at `buffer`, can be sent straight to a file,
    /// or nil when it must go through `read`/`write` (no such path, it needs bouncing, or a live
    /// policy must see the write).
    @inline(__always)
    public func directTarget(at offset: UInt64, length count: Int, buffer: UnsafeRawPointer) -> DirectTarget? {
        if alignmentLock != nil && !isAligned(offset, count, buffer) { return nil }
        return directTarget(at: offset, length: count)
    }

    /// The direct path of a range for a parent that already checked the alignment (which it shares
    /// with this node), or nil.
    @inline(__always)
    public func directTarget(at offset: UInt64, length count: Int) -> DirectTarget? {
        if policyBits.load(ordering: .relaxed) != 0 { return nil }
        return driver.directTarget(at: offset, length: count)
    }

    /// Writes `buffer` at `offset`; durable on return when `fua` is set.
    @inline(__always)
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        assert(!readOnly && offset + UInt64(buffer.count) <= length)
        if policyBits.load(ordering: .relaxed) != 0 {
            if let hook = currentWriteHook {
                try hook.around(self, .data(buffer), at: offset, length: UInt64(buffer.count)) { () throws(BlockError) in
                    try writeWithPolicies(buffer, at: offset, fua: fua)
                }
                return
            }
            try writeWithPolicies(buffer, at: offset, fua: fua)
        } else {
            try writeData(buffer, at: offset, fua: fua, events: false)
        }
    }

    /// The write itself, policies applied: alignment emulation, the driver, the highest offset.
    @inline(__always)
    func writeData(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool, events: Bool) throws(BlockError) {
        if let lock = alignmentLock {
            if isAligned(offset, buffer.count, buffer.baseAddress) {
                lock.lockShared()
                defer { lock.unlock() }
                try driverWrite(buffer, at: offset, fua: fua, events: events)
            } else {
                lock.lockExclusive()
                defer { lock.unlock() }
                try readModifyWrite(buffer, at: offset, fua: fua, events: events)
            }
        } else {
            try driverWrite(buffer, at: offset, fua: fua, events: events)
        }
        highestWrite.max(offset + UInt64(buffer.count), ordering: .relaxed)
    }

    /// Makes a range read as zeroes; with `.fastOnly`, fails with `ENOTSUP` unless the driver can do it cheaply.
    public func writeZeroes(at offset: UInt64, length count: UInt64, flags: ZeroFlags) throws(BlockError) {
        assert(!readOnly && offset + count <= length)
        let bits = policyBits.load(ordering: .relaxed)
        if bits & PolicyBits.writeHook != 0, let hook = currentWriteHook {
            try hook.around(self, .zeroes, at: offset, length: count) { () throws(BlockError) in
                if bits & PolicyBits.threshold != 0 { checkWriteThreshold(offset, count) }
                try zeroData(at: offset, length: count, flags: flags, events: bits & PolicyBits.debugEvents != 0)
            }
            return
        }
        if bits & PolicyBits.threshold != 0 { checkWriteThreshold(offset, count) }
        defer { if bits & PolicyBits.dirtyBitmaps != 0 { dirtyBitmaps.mark(offset, count) } }
        try zeroData(at: offset, length: count, flags: flags, events: bits & PolicyBits.debugEvents != 0)
    }

    /// The zero-write itself: the driver's when it has a fast one, else zero buffers written.
    func zeroData(at offset: UInt64, length count: UInt64, flags: ZeroFlags, events: Bool) throws(BlockError) {
        defer { highestWrite.max(offset + count, ordering: .relaxed) }
        let features = driver.features
        if features.fastZero && isAligned(offset, Int(clamping: count), nil) {
            var driverFlags = flags
            if features.fua == .emulated { driverFlags.remove(.fua) }
            if events { debugEvent(.pwritevZero) }
            defer { if events { debugEvent(.pwritevDone) } }
            do throws(BlockError) {
                try driver.writeZeroes(at: offset, length: count, flags: driverFlags)
                if flags.contains(.fua) && features.fua == .emulated { try driver.flush() }
                return
            } catch where error.errno == ENOTSUP && !flags.contains(.fastOnly) {
                // This range or file system has no fast way: write zero buffers below.
            }
        }
        if flags.contains(.fastOnly) { throw .notSupported("\(name): no fast zero-write") }
        var done: UInt64 = 0
        while done < count {
            let chunk = Int(min(count - done, UInt64(ZeroBlock.size)))
            try writeData(UnsafeRawBufferPointer(rebasing: ZeroBlock.bytes[0..<chunk]), at: offset + done, fua: false, events: events)
            done += UInt64(chunk)
        }
        if flags.contains(.fua) { try flush() }
    }

    /// Discards a range where the driver supports it; otherwise does nothing, which the spec allows.
    public func discard(at offset: UInt64, length count: UInt64) throws(BlockError) {
        assert(!readOnly && offset + count <= length)
        if policyBits.load(ordering: .relaxed) & PolicyBits.writeHook != 0, let hook = currentWriteHook {
            try hook.around(self, .discard, at: offset, length: count) { () throws(BlockError) in
                try discardData(at: offset, length: count)
            }
            return
        }
        try discardData(at: offset, length: count)
    }

    private func discardData(at offset: UInt64, length count: UInt64) throws(BlockError) {
        guard driver.features.discard else { return }
        if policyBits.load(ordering: .relaxed) & PolicyBits.dirtyBitmaps != 0 { dirtyBitmaps.mark(offset, count) }
        let align = UInt64(driver.features.alignment)
        // Only whole aligned blocks can be discarded; the unaligned edges are left as they are.
        let start = (offset + align - 1) / align * align
        let end = (offset + count) / align * align
        guard end > start else { return }
        do {
            try driver.discard(at: start, length: end - start)
        } catch {
            discardsFailed.add(1, ordering: .relaxed)
            throw error
        }
        discardsSucceeded.add(1, ordering: .relaxed)
        discardedBytes.add(end - start, ordering: .relaxed)
    }

    /// Makes every completed write durable.
    public func flush() throws(BlockError) {
        guard !readOnly else { return }
        if let debugFile {
            debugFile.debugEvent(.flushToOs)
            debugFile.debugEvent(.flushToDisk)
        }
        guard driver.features.needsFlush else { return }
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
        // Bitmaps cover the size they were made for: a resize would leave writes past it unrecorded.
        if newLength != length, let bitmap = dirtyBitmaps.all.first {
            throw .notPermitted("node '\(name)' has the dirty bitmap '\(bitmap.name)'; remove its bitmaps before resizing it")
        }
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

    /// An aligned write handed to the driver (QEMU's `bdrv_aligned_pwritev`, where `pwritev` and
    /// `pwritev_done` are raised when `events`).
    @inline(__always)
    private func driverWrite(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool, events: Bool) throws(BlockError) {
        if events { debugEvent(.pwritev) }
        defer { if events { debugEvent(.pwritevDone) } }
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

    /// An unaligned write: the partial blocks at the head and the tail are read, the payload is
    /// copied between them, and the aligned whole is written.
    private func readModifyWrite(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool, events: Bool) throws(BlockError) {
        let align = driver.features.alignment
        let span = alignedSpan(offset, buffer.count)
        let bounce = AlignedBuffer(capacity: span.count)
        let whole = UnsafeMutableRawBufferPointer(rebasing: bounce.bytes[0..<span.count])
        let head = Int(offset - span.start)
        let tail = span.count - head - buffer.count
        if head > 0 {
            if events { debugEvent(.pwritevRmwHead) }
            try driver.read(into: UnsafeMutableRawBufferPointer(rebasing: whole[0..<align]), at: span.start)
            if events { debugEvent(.pwritevRmwAfterHead) }
        }
        // The tail block is read unless it is the head block, already read.
        if tail > 0 && !(head > 0 && span.count == align) {
            if events { debugEvent(.pwritevRmwTail) }
            let last = span.count - align
            try driver.read(into: UnsafeMutableRawBufferPointer(rebasing: whole[last..<span.count]), at: span.start + UInt64(last))
            if events { debugEvent(.pwritevRmwAfterTail) }
        }
        UnsafeMutableRawBufferPointer(rebasing: whole[head..<head + buffer.count]).copyMemory(from: buffer)
        try driverWrite(UnsafeRawBufferPointer(whole), at: span.start, fua: fua, events: events)
    }
}

/// A pthread reader-writer lock: shared for aligned writes, exclusive for read-modify-write.
/// Kept beside `Mutex` because writes on an aligned (O_DIRECT) node run side by side and only a
/// read-modify-write must be alone; a `Mutex` would serialise every write of the node.
///
/// `@unchecked Sendable`: the pthread object is allocated once, never moves, and is made for use
/// from many threads.
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
