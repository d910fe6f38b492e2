#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock

/// The `vdi` format driver: VirtualBox images, a block map of 1 MiB blocks allocated in order at the
/// end of the file (dynamic) or all present from creation (static).
///
/// Concurrency: the block map is guarded by `lock`, held only to look entries up or change them;
/// data moves without it. Allocations are serialised by `allocation`, so a block is allocated once
/// and its bytes are written before its map entry says so.
///
/// `@unchecked Sendable`: `bmap` and `blocksAllocated` are guarded by `lock`; the rest is immutable.
public final class VdiDriver: BlockDriver, @unchecked Sendable {
    public let driverName = "vdi"
    public let features: DriverFeatures
    let file: BlockNode
    let lock = MonotonicCondition()
    let allocation = MonotonicCondition()
    /// The header as opened; `blocksAllocated` keeps the count since.
    let header: VdiHeader
    /// Blocks allocated so far; guarded by `lock`.
    var blocksAllocated: UInt32
    /// Little-endian on-disk entries, decoded. Guarded by `lock`.
    var bmap: [UInt32]
    let blockSize: UInt64
    let readOnly: Bool

    init(file: BlockNode, header: VdiHeader, bmap: [UInt32], readOnly: Bool) {
        self.file = file
        self.header = header
        self.blocksAllocated = header.blocksAllocated
        self.bmap = bmap
        self.blockSize = UInt64(header.blockSize)
        self.readOnly = readOnly
        var features = DriverFeatures()
        features.blockStatus = true
        features.fastZero = true
        features.writeThresholdOnFile = true
        self.features = features
    }

    public var length: UInt64 { header.size }
    public var filename: String { file.driver.filename }
    public var allocatedSize: UInt64? { file.driver.allocatedSize }

    /// Where a block's data lies in the file, or nil when the block reads as zeroes; EIO for an entry
    /// that points past the blocks the image can hold.
    func hostOffset(ofBlock block: Int) throws(BlockError) -> UInt64? {
        lock.lock()
        let entry = bmap[block]
        lock.unlock()
        guard entry < VdiHeader.discarded else { return nil }
        guard entry < header.blocksInImage else {
            throw .io("vdi: block map entry \(block) points to block \(entry), past the \(header.blocksInImage) blocks of the image")
        }
        return UInt64(header.offsetData) + UInt64(entry) * blockSize
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
        try forEachBlock(offset, buffer.count) { (block, intra, done, length) throws(BlockError) in
            let target = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + length])
            guard let host = try hostOffset(ofBlock: block) else {
                target.initializeMemory(as: UInt8.self, repeating: 0)
                return
            }
            try readFile(into: target, at: host + intra)
        }
    }

    /// Reads file bytes; what lies past the end of the file reads as zeroes, as QEMU's file layer gives it.
    func readFile(into target: UnsafeMutableRawBufferPointer, at position: UInt64) throws(BlockError) {
        let fileLength = file.length
        let available = position >= fileLength ? 0 : Int(min(UInt64(target.count), fileLength - position))
        if available > 0 {
            file.debugEvent(.readAio)
            try file.read(into: UnsafeMutableRawBufferPointer(rebasing: target[0..<available]), at: position)
        }
        if available < target.count {
            UnsafeMutableRawBufferPointer(rebasing: target[available...]).initializeMemory(as: UInt8.self, repeating: 0)
        }
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        try forEachBlock(offset, buffer.count) { (block, intra, done, length) throws(BlockError) in
            let source = UnsafeRawBufferPointer(rebasing: buffer[done..<done + length])
            if let host = try hostOffset(ofBlock: block) {
                file.debugEvent(.writeAio)
                try file.write(source, at: host + intra, fua: false)
            } else {
                try allocate(block: block, writing: source, at: intra)
            }
        }
    }

    /// Allocates `block` at the end of the data area with `source` at `intra` and zeroes around it,
    /// then records it in the map and the header. A block allocated meanwhile is written in place.
    func allocate(block: Int, writing source: UnsafeRawBufferPointer, at intra: UInt64) throws(BlockError) {
        allocation.lock()
        defer { allocation.unlock() }
        if let host = try hostOffset(ofBlock: block) {
            try file.write(source, at: host + intra, fua: false)
            return
        }
        lock.lock()
        let index = blocksAllocated
        lock.unlock()
        guard index < header.blocksInImage else {
            throw .io("vdi: no free block left (\(index) of \(header.blocksInImage) allocated); the image is corrupt")
        }
        let host = UInt64(header.offsetData) + UInt64(index) * blockSize
        let data = AlignedBuffer(capacity: Int(blockSize))
        let raw = data.bytes
        raw.initializeMemory(as: UInt8.self, repeating: 0)
        UnsafeMutableRawBufferPointer(rebasing: raw[Int(intra)..<Int(intra) + source.count]).copyMemory(from: source)
        if host + blockSize > file.length { try file.resize(to: host + blockSize) }
        file.debugEvent(.clusterAlloc)
        try file.write(UnsafeRawBufferPointer(raw), at: host, fua: false)
        // The map sector, then the count: a crash in between leaves a count that check reports.
        lock.lock()
        bmap[block] = index
        blocksAllocated = index + 1
        let first = block / 128 * 128
        let sector = (first..<min(first + 128, bmap.count)).map { bmap[$0] }
        lock.unlock()
        var bytes = [UInt8](repeating: 0, count: 512)
        bytes.withUnsafeMutableBytes { out in
            for (slot, entry) in sector.enumerated() { VdiBytes.put(entry, out, slot * 4) }
        }
        try writeBytes(bytes, at: UInt64(header.offsetBmap) + UInt64(first) * 4)
        var count = [UInt8](repeating: 0, count: 4)
        count.withUnsafeMutableBytes { VdiBytes.put(index + 1, $0, 0) }
        try writeBytes(count, at: UInt64(VdiHeader.blocksAllocatedOffset))
    }

    func writeBytes(_ bytes: [UInt8], at offset: UInt64) throws(BlockError) {
        try bytes.withBytes { (raw) throws(BlockError) in try file.write(raw, at: offset, fua: false) }
    }

    public func writeZeroes(at offset: UInt64, length count: UInt64, flags: ZeroFlags) throws(BlockError) {
        // Blocks not allocated read as zeroes already; allocated ones get zero bytes written.
        var pieces: [(host: UInt64, length: Int)] = []
        var done: UInt64 = 0
        while done < count {
            let position = offset + done
            let intra = position % blockSize
            let length = min(count - done, blockSize - intra)
            if let host = try hostOffset(ofBlock: Int(position / blockSize)) { pieces.append((host + intra, Int(length))) }
            done += length
        }
        guard !pieces.isEmpty else { return }
        guard !flags.contains(.fastOnly) else { throw .notSupported("vdi: zeroing allocated blocks writes their bytes") }
        let zeroes = AlignedBuffer(capacity: pieces.map(\.length).max() ?? 0)
        zeroes.bytes.initializeMemory(as: UInt8.self, repeating: 0)
        for piece in pieces {
            try file.write(UnsafeRawBufferPointer(rebasing: zeroes.bytes[0..<piece.length]), at: piece.host, fua: false)
        }
    }

    public func flush() throws(BlockError) {
        try file.flush()
    }

    public func blockStatus(at offset: UInt64, length count: UInt64) throws(BlockError) -> [Extent] {
        var extents: [Extent] = []
        var done: UInt64 = 0
        let limit = min(count, blockSize * 1024)
        while done < limit {
            let position = offset + done
            let intra = position % blockSize
            let length = min(limit - done, blockSize - intra)
            if let host = try hostOffset(ofBlock: Int(position / blockSize)) {
                if header.imageType == VdiHeader.typeStatic {
                    // Static images ask the file where it keeps holes, as QEMU recurses into it.
                    for extent in try fileStatus(at: host + intra, length: length) { extents.appendMerging(extent) }
                } else {
                    extents.appendMerging(.data(length, hostOffset: host + intra))
                }
            } else {
                extents.appendMerging(Extent(length: length, zero: true, hole: true, depth: 0))
            }
            done += length
        }
        return extents
    }

    /// Data extents for a host range, marked zero where the file has holes or ends.
    func fileStatus(at host: UInt64, length: UInt64) throws(BlockError) -> [Extent] {
        var result: [Extent] = []
        var done: UInt64 = 0
        while done < length {
            let position = host + done
            guard position < file.length else {
                result.append(Extent(length: length - done, zero: true, hole: false, depth: 0, hostOffset: position))
                break
            }
            let want = min(length - done, file.length - position)
            guard let extent = try file.blockStatus(at: position, length: want).first, extent.length > 0 else { break }
            let piece = min(extent.length, want)
            result.append(Extent(length: piece, zero: extent.zero, hole: false, depth: 0, hostOffset: position))
            done += piece
        }
        if done < length && result.isEmpty { result.append(.data(length, hostOffset: host)) }
        return result
    }

    /// Opens `vdi` nodes.
    public static let opener: DriverOpener = { options, context throws(OptionError) in
        guard let file = try context.child("file", of: options) else { throw options.missing("file") }
        try context.requireWritable([file], of: options)
        let readOnly = context.common.readOnly
        do throws(BlockError) {
            let header = try VdiHeader.parse(try Qcow2Opener.readBytes(file, at: 0, count: Int(min(file.length, 512))))
            let mapEnd = UInt64(header.offsetBmap) + header.bmapBytes
            guard mapEnd <= file.length else {
                throw .invalid("the block map (\(header.blocksInImage) entries at \(header.offsetBmap)) lies past the end of the file (\(file.length) bytes)")
            }
            if !readOnly && header.blocksAllocated > header.blocksInImage {
                throw .invalid("\(header.blocksAllocated) blocks allocated of \(header.blocksInImage); the image is corrupt")
            }
            let raw = try Qcow2Opener.readBytes(file, at: UInt64(header.offsetBmap), count: Int(header.blocksInImage) * 4)
            let bmap = raw.withUnsafeBytes { bytes in (0..<Int(header.blocksInImage)).map { VdiBytes.u32(bytes, $0 * 4) } }
            let driver = VdiDriver(file: file, header: header, bmap: bmap, readOnly: readOnly)
            return OpenedDriver(driver: driver, children: [("file", file)])
        } catch {
            throw options.failure(error.message)
        }
    }
}
