#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock

/// The `vpc` format driver: Virtual PC / Hyper-V VHD images, fixed (the disk, then the footer) or
/// dynamic (a block allocation table of blocks, each a sector bitmap then data, allocated at the
/// end of the file where the footer moves on).
///
/// Concurrency: the table, the end of the data and the set of blocks whose bitmap is full are
/// guarded by `lock`, held only to look them up or change them; allocations are serialised by
/// `allocation`, and write a block's bitmap, the moved footer and the table entry before the data.
///
/// `@unchecked Sendable`: the mutable state is guarded by `lock`; the rest is immutable.
public final class VpcDriver: BlockDriver, @unchecked Sendable {
    public let driverName = "vpc"
    public let features: DriverFeatures
    let file: BlockNode
    let footer: VpcFooter
    public let length: UInt64
    let fixed: Bool
    let lock = MonotonicCondition()
    let allocation = MonotonicCondition()
    let blockSize: UInt64
    let bitmapSize: UInt64
    let tableOffset: UInt64
    /// Block → sector of its bitmap (0xffffffff: not allocated). Guarded by `lock`.
    var table: [UInt32]
    /// Where the next block goes (and the footer now lies). Guarded by `lock`.
    var freeOffset: UInt64
    /// Blocks whose bitmap this driver has set to all ones. Guarded by `lock`.
    var fullBitmaps = Set<Int>()

    init(file: BlockNode, footer: VpcFooter, length: UInt64, dynamic: VpcDynamicHeader?, table: [UInt32], freeOffset: UInt64) {
        self.file = file
        self.footer = footer
        self.length = length
        self.fixed = dynamic == nil
        self.blockSize = UInt64(dynamic?.blockSize ?? 0)
        self.bitmapSize = ((UInt64(dynamic?.blockSize ?? 0) / (8 * 512)) + 511) & ~511
        self.tableOffset = dynamic?.tableOffset ?? 0
        self.table = table
        self.freeOffset = freeOffset
        var features = DriverFeatures()
        features.blockStatus = true
        features.writeThresholdOnFile = true
        if dynamic == nil {
            features.fastZero = file.features.fastZero
            features.discard = file.features.discard
        } else {
            features.fastZero = true
        }
        self.features = features
    }

    public var filename: String { file.driver.filename }
    public var allocatedSize: UInt64? { file.driver.allocatedSize }

    /// Where a block's data starts in the file, or nil when it is not allocated.
    func dataOffset(ofBlock block: Int) -> UInt64? {
        lock.lock()
        defer { lock.unlock() }
        guard block < table.count, table[block] != 0xffff_ffff else { return nil }
        return UInt64(table[block]) * 512 + bitmapSize
    }

    /// Calls `body` for each piece of a guest range that lies in one block.
    @inline(__always)
    func forEachBlock(_ offset: UInt64, _ count: Int, _ body: (_ block: Int, _ intra: UInt64, _ done: Int, _ length: Int) throws(BlockError) -> Void) throws(BlockError) {
        var done = 0
        while done < count {
            let position = offset + UInt64(done)
            let intra = position % blockSize
            let length = Int(min(UInt64(count - done), blockSize - intra))
            try body(Int(position / blockSize), intra, done, length)
            done += length
        }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        if fixed {
            file.debugEvent(.readAio)
            try file.read(into: buffer, at: offset)
            return
        }
        try forEachBlock(offset, buffer.count) { (block, intra, done, length) throws(BlockError) in
            let target = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + length])
            guard let host = dataOffset(ofBlock: block) else {
                target.initializeMemory(as: UInt8.self, repeating: 0)
                return
            }
            guard host + intra + UInt64(length) <= file.length else {
                throw .io("vpc: block \(block) at \(host) lies past the end of the image file")
            }
            file.debugEvent(.readAio)
            try file.read(into: target, at: host + intra)
        }
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        if fixed {
            file.debugEvent(.writeAio)
            try file.write(buffer, at: offset, fua: false)
            return
        }
        try forEachBlock(offset, buffer.count) { (block, intra, done, length) throws(BlockError) in
            let source = UnsafeRawBufferPointer(rebasing: buffer[done..<done + length])
            let host = try writableBlock(block)
            guard host + intra + UInt64(length) <= file.length else {
                throw .io("vpc: block \(block) at \(host) lies past the end of the image file")
            }
            file.debugEvent(.writeAio)
            try file.write(source, at: host + intra, fua: false)
        }
    }

    /// The data offset of `block`, allocated first when it is not; its sector bitmap is all ones
    /// before any byte is written to it, so other readers see every sector written (as QEMU does).
    func writableBlock(_ block: Int) throws(BlockError) -> UInt64 {
        lock.lock()
        if block < table.count, table[block] != 0xffff_ffff, fullBitmaps.contains(block) {
            let host = UInt64(table[block]) * 512 + bitmapSize
            lock.unlock()
            return host
        }
        lock.unlock()
        allocation.lock()
        defer { allocation.unlock() }
        guard block < table.count else { throw .io("vpc: block \(block) lies past the allocation table") }
        let ones = [UInt8](repeating: 0xff, count: Int(bitmapSize))
        if let host = dataOffset(ofBlock: block) {
            lock.lock()
            let done = fullBitmaps.contains(block)
            lock.unlock()
            if !done {
                try writeBytes(ones, at: host - bitmapSize)
                lock.lock()
                fullBitmaps.insert(block)
                lock.unlock()
            }
            return host
        }
        lock.lock()
        let start = freeOffset
        lock.unlock()
        let end = start + bitmapSize + blockSize
        guard start % 512 == 0, start / 512 < 0xffff_ffff else { throw .io("vpc: the image is full") }
        // The bitmap over the old footer, the footer at the new end, then the table entry.
        if end + 512 > file.length { try file.resize(to: end + 512) }
        file.debugEvent(.clusterAlloc)
        try writeBytes(ones, at: start)
        try writeBytes(footer.bytes, at: end)
        try file.flush()
        var entry = [UInt8](repeating: 0, count: 4)
        entry.withUnsafeMutableBytes { VpcBytes.put(UInt32(start / 512), $0, 0) }
        try writeBytes(entry, at: tableOffset + UInt64(block) * 4)
        lock.lock()
        table[block] = UInt32(start / 512)
        freeOffset = end
        fullBitmaps.insert(block)
        lock.unlock()
        return start + bitmapSize
    }

    func writeBytes(_ bytes: [UInt8], at offset: UInt64) throws(BlockError) {
        try bytes.withBytes { (raw) throws(BlockError) in try file.write(raw, at: offset, fua: false) }
    }

    public func writeZeroes(at offset: UInt64, length count: UInt64, flags: ZeroFlags) throws(BlockError) {
        if fixed {
            try file.writeZeroes(at: offset, length: count, flags: flags)
            return
        }
        // Blocks not allocated read as zeroes already; allocated ones get zero bytes written.
        var pieces: [(block: Int, intra: UInt64, length: Int)] = []
        var done: UInt64 = 0
        while done < count {
            let position = offset + done
            let intra = position % blockSize
            let length = min(count - done, blockSize - intra)
            if dataOffset(ofBlock: Int(position / blockSize)) != nil { pieces.append((Int(position / blockSize), intra, Int(length))) }
            done += length
        }
        guard !pieces.isEmpty else { return }
        guard !flags.contains(.fastOnly) else { throw .notSupported("vpc: zeroing allocated blocks writes their bytes") }
        let zeroes = AlignedBuffer(capacity: pieces.map(\.length).max() ?? 0)
        zeroes.bytes.initializeMemory(as: UInt8.self, repeating: 0)
        for piece in pieces {
            let host = try writableBlock(piece.block)
            try file.write(UnsafeRawBufferPointer(rebasing: zeroes.bytes[0..<piece.length]), at: host + piece.intra, fua: false)
        }
    }

    public func discard(at offset: UInt64, length count: UInt64) throws(BlockError) {
        if fixed { try file.discard(at: offset, length: count) }
    }

    public func flush() throws(BlockError) {
        try file.flush()
    }

    public func blockStatus(at offset: UInt64, length count: UInt64) throws(BlockError) -> [Extent] {
        if fixed {
            // The disk is the file's first bytes: data everywhere, zero where the file has holes
            // (QEMU's raw recursion into the file).
            var extents: [Extent] = []
            var position = offset
            for extent in try file.blockStatus(at: offset, length: count) {
                extents.appendMerging(Extent(length: extent.length, zero: extent.zero, hole: false, depth: 0, hostOffset: position))
                position += extent.length
            }
            return extents
        }
        var extents: [Extent] = []
        var done: UInt64 = 0
        let limit = min(count, blockSize * 1024)
        while done < limit {
            let position = offset + done
            let intra = position % blockSize
            let length = min(limit - done, blockSize - intra)
            if let host = dataOffset(ofBlock: Int(position / blockSize)) {
                extents.appendMerging(.data(length, hostOffset: host + intra))
            } else {
                extents.appendMerging(Extent(length: length, zero: true, hole: true, depth: 0))
            }
            done += length
        }
        return extents
    }

    /// Opens `vpc` nodes.
    public static let opener: DriverOpener = { options, context throws(OptionError) in
        guard let file = try context.child("file", of: options) else { throw options.missing("file") }
        try context.requireWritable([file], of: options)
        do throws(BlockError) {
            return OpenedDriver(driver: try open(file), children: [("file", file)])
        } catch {
            throw options.failure(error.message)
        }
    }

    /// Reads the footer (at the start of a dynamic image, else at the end), the dynamic header and
    /// the table, refusing what QEMU refuses.
    static func open(_ file: BlockNode) throws(BlockError) -> VpcDriver {
        guard file.length >= 512 else { throw .invalid("File too small for a VHD header") }
        var footer = VpcFooter(bytes: try Qcow2Opener.readBytes(file, at: 0, count: 512))
        var dynamicLayout = true
        if !footer.hasCookie {
            footer = VpcFooter(bytes: try Qcow2Opener.readBytes(file, at: file.length - 512, count: 512))
            guard footer.hasCookie else { throw .invalid("invalid VPC image") }
            dynamicLayout = false
        }
        guard footer.checksumValid else { throw .invalid("Incorrect header checksum") }
        let sectors = footer.sectors
        guard sectors <= VpcFooter.maxSectors else { throw BlockError(errno: EFBIG, "File too large") }
        let length = sectors * 512
        if footer.diskType == VpcFooter.typeDifferencing {
            throw .notSupported("VHD differencing images are not supported (their parent is not opened)")
        }
        guard dynamicLayout && footer.diskType != VpcFooter.typeFixed else {
            guard length <= file.length else {
                throw .invalid("the fixed VHD image is \(file.length) bytes, too short for its \(length)-byte disk")
            }
            return VpcDriver(file: file, footer: footer, length: length, dynamic: nil, table: [], freeOffset: 0)
        }
        guard footer.dataOffset <= file.length, file.length - footer.dataOffset >= 1024 else {
            throw .invalid("invalid dynamic VHD image")
        }
        let header = try VpcDynamicHeader.parse(try Qcow2Opener.readBytes(file, at: footer.dataOffset, count: 1024))
        let blockSize = UInt64(header.blockSize)
        guard blockSize >= 512, blockSize & (blockSize - 1) == 0 else { throw .invalid("Invalid block size \(header.blockSize)") }
        guard length / blockSize <= 0xffff_ffff else { throw .invalid("Too many blocks") }
        guard UInt64(header.maxTableEntries) * blockSize >= length else { throw .invalid("Page table too small") }
        guard header.maxTableEntries <= Int32.max / 4 else { throw .invalid("Max Table Entries too large (\(header.maxTableEntries))") }
        let tableBytes = UInt64(header.maxTableEntries) * 4
        guard header.tableOffset <= file.length, tableBytes <= file.length - header.tableOffset else {
            throw .invalid("the block allocation table (\(header.maxTableEntries) entries at \(header.tableOffset)) lies past the end of the file")
        }
        let raw = try Qcow2Opener.readBytes(file, at: header.tableOffset, count: Int(tableBytes))
        let table = raw.withUnsafeBytes { bytes in (0..<Int(header.maxTableEntries)).map { VpcBytes.u32(bytes, $0 * 4) } }
        let bitmapSize = ((blockSize / (8 * 512)) + 511) & ~511
        var freeOffset = (header.tableOffset + tableBytes + 511) & ~511
        for entry in table where entry != 0xffff_ffff {
            freeOffset = max(freeOffset, UInt64(entry) * 512 + bitmapSize + blockSize)
        }
        guard freeOffset <= file.length else {
            throw .invalid("block-vpc: free_data_block_offset points after the end of file. The image has been truncated.")
        }
        return VpcDriver(file: file, footer: footer, length: length, dynamic: header, table: table, freeOffset: freeOffset)
    }
}
