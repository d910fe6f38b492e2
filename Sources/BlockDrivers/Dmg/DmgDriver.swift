import BlockCore
import LogOptionsClock

/// The `dmg` format driver: Apple disk images (UDIF), read-only, with raw, zero, ignored, zlib and
/// bzip2 chunks; lzfse and ADC chunks fail with EIO and a message, as without QEMU's modules.
final class DmgDriver: ReadOnlyImageDriver {
    let driverName = "dmg"
    let features: DriverFeatures
    let length: UInt64
    private let file: BlockNode
    private let table: DmgTable
    private let cache = ChunkCache(capacity: 4)

    init(file: BlockNode, table: DmgTable) {
        self.file = file
        self.table = table
        self.length = table.sectors * 512
        var features = DriverFeatures()
        features.needsFlush = false
        features.alignment = 512
        features.blockStatus = true
        self.features = features
    }

    var filename: String { file.driver.filename }
    var allocatedSize: UInt64? { file.driver.allocatedSize }

    /// The chunk holding the byte at `offset`, or EIO when no chunk does.
    private func chunk(at offset: UInt64) throws(BlockError) -> (index: Int, chunk: DmgChunk) {
        guard let index = table.chunkIndex(holding: offset / 512) else {
            throw .io("dmg: sector \(offset / 512) lies in no chunk of the image")
        }
        return (index, table.chunks[index])
    }

    private func decompressed(_ index: Int, _ chunk: DmgChunk) throws(BlockError) -> [UInt8] {
        try cache.chunk(index) { () throws(BlockError) -> [UInt8] in
            let size = Int(chunk.sectorCount) * 512
            let what = "dmg: chunk \(index)"
            switch chunk.type {
            case DmgChunk.zlib:
                return try ChunkDecoder.zlib(try ReadOnlyImage.bytes(file, at: chunk.offset, count: Int(chunk.length)), size: size, what: what)
            case DmgChunk.bzip2:
                return try ChunkDecoder.bzip2(try ReadOnlyImage.bytes(file, at: chunk.offset, count: Int(chunk.length)), size: size, what: what)
            case DmgChunk.lzfse:
                throw .io("\(what) is lzfse-compressed, which blockd does not decompress")
            case DmgChunk.adc:
                throw .io("\(what) is ADC-compressed, which blockd does not decompress")
            default:
                throw .io("\(what) has the unknown type 0x\(String(chunk.type, radix: 16))")
            }
        }
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        var done = 0
        while done < buffer.count {
            let position = offset + UInt64(done)
            let (index, chunk) = try chunk(at: position)
            let inChunk = position - chunk.sector * 512
            let count = Int(min(chunk.sectorCount * 512 - inChunk, UInt64(buffer.count - done)))
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + count])
            switch chunk.type {
            case DmgChunk.zeroes, DmgChunk.ignore:
                piece.initializeMemory(as: UInt8.self, repeating: 0)
            case DmgChunk.raw:
                // Stored bytes short of the chunk's sectors read as zeroes.
                let stored = inChunk < chunk.length ? Int(min(chunk.length - inChunk, UInt64(count))) : 0
                if stored > 0 {
                    guard chunk.offset <= file.length, chunk.length <= file.length - chunk.offset else {
                        throw .io("dmg: chunk \(index) (\(chunk.offset)+\(chunk.length)) lies past the end of the image file")
                    }
                    try file.read(into: UnsafeMutableRawBufferPointer(rebasing: piece[0..<stored]), at: chunk.offset + inChunk)
                }
                UnsafeMutableRawBufferPointer(rebasing: piece[stored...]).initializeMemory(as: UInt8.self, repeating: 0)
            default:
                let bytes = try decompressed(index, chunk)
                bytes.withUnsafeBytes { source in
                    piece.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[Int(inChunk)..<Int(inChunk) + count]))
                }
            }
            done += count
        }
    }

    func blockStatus(at offset: UInt64, length: UInt64) throws(BlockError) -> [Extent] {
        var extents: [Extent] = []
        var position = offset
        let end = offset + length
        while position < end && extents.count < 1024 {
            guard let index = table.chunkIndex(holding: position / 512) else { break }
            let chunk = table.chunks[index]
            let inChunk = position - chunk.sector * 512
            let count = min(chunk.sectorCount * 512 - inChunk, end - position)
            if chunk.readsZeroes {
                extents.appendMerging(Extent(length: count, zero: true, hole: false))
            } else if chunk.type == DmgChunk.raw && inChunk + count <= chunk.length {
                extents.appendMerging(.data(count, hostOffset: chunk.offset + inChunk))
            } else {
                extents.appendMerging(.data(count))
            }
            position += count
        }
        return extents.isEmpty ? [.data(length)] : extents
    }

    /// Opens `dmg` nodes.
    static let opener: DriverOpener = { options, context throws(OptionError) in
        try ReadOnlyImage.requireReadOnly(context, options)
        guard let file = try context.child("file", of: options) else { throw options.missing("file") }
        let table: DmgTable
        do throws(BlockError) {
            table = try DmgTable.read(file)
        } catch {
            throw options.failure(error.message)
        }
        for type in table.unreadableTypes.sorted() {
            let name = type == DmgChunk.lzfse ? "lzfse-compressed" : type == DmgChunk.adc ? "ADC-compressed" : "of unknown type \(String(type, radix: 16))"
            Log.warning("dmg '\(file.driver.filename)': the image has chunks \(name); reading them fails with an I/O error")
        }
        return OpenedDriver(driver: DmgDriver(file: file, table: table), children: [("file", file)])
    }

    /// Scores a file as QEMU's dmg probe does: by the `.dmg` suffix of its name alone.
    static func probe(_ header: [UInt8], _ filename: String) -> Int {
        filename.count > 4 && filename.hasSuffix(".dmg") ? 2 : 0
    }
}
