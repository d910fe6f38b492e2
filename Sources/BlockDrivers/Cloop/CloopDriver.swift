import BlockCore
import LogOptionsClock

/// The `cloop` format driver: compressed loop images (V2.0), read-only. After a 128-byte shell
/// header come the block size and count, then `count + 1` offsets of zlib-compressed blocks.
final class CloopDriver: ReadOnlyImageDriver {
    /// The start of the header QEMU's probe compares.
    static let magic = Array("#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n".utf8)
    /// Largest block size QEMU accepts, and the cap of the offsets table.
    static let maxBlockSize: UInt32 = 64 << 20
    static let maxOffsetsBytes: UInt64 = 512 << 20

    let driverName = "cloop"
    let features: DriverFeatures
    let length: UInt64
    private let file: BlockNode
    private let blockSize: Int
    private let offsets: [UInt64]
    private let cache = ChunkCache(capacity: 8)

    init(file: BlockNode, blockSize: Int, offsets: [UInt64]) {
        self.file = file
        self.blockSize = blockSize
        self.offsets = offsets
        self.length = UInt64(offsets.count - 1) * UInt64(blockSize)
        var features = DriverFeatures()
        features.needsFlush = false
        features.alignment = 512
        self.features = features
    }

    var filename: String { file.driver.filename }
    var allocatedSize: UInt64? { file.driver.allocatedSize }

    private func block(_ index: Int) throws(BlockError) -> [UInt8] {
        try cache.chunk(index) { () throws(BlockError) -> [UInt8] in
            let start = offsets[index]
            let compressed = try ReadOnlyImage.bytes(file, at: start, count: Int(offsets[index + 1] - start))
            return try ChunkDecoder.zlib(compressed, size: blockSize, what: "cloop: block \(index)")
        }
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        var done = 0
        while done < buffer.count {
            let position = offset + UInt64(done)
            let index = Int(position / UInt64(blockSize))
            let inBlock = Int(position % UInt64(blockSize))
            let count = min(blockSize - inBlock, buffer.count - done)
            let bytes = try block(index)
            bytes.withUnsafeBytes { source in
                UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + count])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: source[inBlock..<inBlock + count]))
            }
            done += count
        }
    }

    /// Reads and checks the header and offsets as QEMU's cloop driver does (same refusals).
    static func parse(_ file: BlockNode) throws(BlockError) -> (blockSize: Int, offsets: [UInt64]) {
        let head = try ReadOnlyImage.bytes(file, at: 128, count: 8)
        let blockSize = ReadOnlyImage.be32(head, 0)
        guard blockSize % 512 == 0 else { throw .invalid("block_size \(blockSize) must be a multiple of 512") }
        guard blockSize != 0 else { throw .invalid("block_size cannot be zero") }
        guard blockSize <= maxBlockSize else { throw .invalid("block_size \(blockSize) must be \(maxBlockSize >> 20) MB or less") }
        let count = ReadOnlyImage.be32(head, 4)
        guard count <= (UInt32.max - 1) / 8 else { throw .invalid("n_blocks \(count) must be \((UInt32.max - 1) / 8) or less") }
        let tableBytes = (UInt64(count) + 1) * 8
        guard tableBytes <= maxOffsetsBytes else { throw .invalid("image requires too many offsets, try increasing block size") }
        let table = try ReadOnlyImage.bytes(file, at: 136, count: Int(tableBytes))
        var offsets: [UInt64] = []
        offsets.reserveCapacity(Int(count) + 1)
        for index in 0...Int(count) {
            let value = ReadOnlyImage.be64(table, index * 8)
            if index > 0 {
                guard value >= offsets[index - 1] else {
                    throw .invalid("offsets not monotonically increasing at index \(index), image file is corrupt")
                }
                guard value - offsets[index - 1] <= 2 * UInt64(maxBlockSize) else {
                    throw .invalid("invalid compressed block size at index \(index), image file is corrupt")
                }
            }
            offsets.append(value)
        }
        return (Int(blockSize), offsets)
    }

    /// Opens `cloop` nodes.
    static let opener: DriverOpener = { options, context throws(OptionError) in
        try ReadOnlyImage.requireReadOnly(context, options)
        guard let file = try context.child("file", of: options) else { throw options.missing("file") }
        do throws(BlockError) {
            let (blockSize, offsets) = try parse(file)
            return OpenedDriver(driver: CloopDriver(file: file, blockSize: blockSize, offsets: offsets), children: [("file", file)])
        } catch {
            throw options.failure(error.message)
        }
    }

    /// Scores a file's first bytes as QEMU's cloop probe does (a weak 2 for the V2.0 header).
    static func probe(_ header: [UInt8], _ filename: String) -> Int {
        guard !header.isEmpty else { return 0 }
        let length = min(magic.count, header.count)
        return Array(header[0..<length]) == Array(magic[0..<length]) ? 2 : 0
    }
}
