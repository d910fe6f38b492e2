import BlockCore

/// One chunk of a dmg image: a run of guest sectors and where (and how) their bytes are stored.
struct DmgChunk: Sendable, Equatable {
    /// The chunk types of a `mish` block table.
    static let zeroes: UInt32 = 0
    static let raw: UInt32 = 1
    static let ignore: UInt32 = 2
    static let adc: UInt32 = 0x8000_0004
    static let zlib: UInt32 = 0x8000_0005
    static let bzip2: UInt32 = 0x8000_0006
    static let lzfse: UInt32 = 0x8000_0007
    static let comment: UInt32 = 0x7fff_fffe
    static let last: UInt32 = 0xffff_ffff

    var type: UInt32
    /// First guest sector and number of sectors.
    var sector: UInt64
    var sectorCount: UInt64
    /// Where the stored bytes are in the file, and how many.
    var offset: UInt64
    var length: UInt64

    /// True for chunks that read as zeroes without touching the file.
    var readsZeroes: Bool { type == DmgChunk.zeroes || type == DmgChunk.ignore }
}

/// The chunk table of a dmg image, read from its UDIF (`koly`) trailer and the `blkx` resources
/// (resource fork or XML property list) it points to, with QEMU's checks.
struct DmgTable: Sendable {
    /// Largest stored and decompressed chunk QEMU accepts (64 MiB).
    static let maxLength: UInt64 = 64 << 20
    static let maxSectorCount: UInt64 = maxLength / 512
    /// Largest property list or single resource read (QEMU's cap for the XML, 16 MiB).
    static let maxInfoLength: UInt64 = 16 << 20

    /// The chunks, by first sector.
    var chunks: [DmgChunk] = []
    /// Guest sectors, from the trailer.
    var sectors: UInt64 = 0
    /// Chunk types found that cannot be read (lzfse, ADC, unknown), for a warning at open.
    var unreadableTypes: Set<UInt32> = []

    /// Finds the `koly` trailer: in the last 511 bytes of the second-last sector or the first 4 of the last.
    static func findTrailer(_ file: BlockNode) throws(BlockError) -> UInt64 {
        let length = file.length
        guard length >= 512 else { throw .invalid("dmg file must be at least 512 bytes long") }
        let start = length > 511 + 512 ? length - 511 - 512 : 0
        let window = try ReadOnlyImage.bytes(file, at: start, count: Int(min(length - start, 515)))
        for index in 0..<(window.count - 3) where window[index..<index + 4].elementsEqual("koly".utf8) {
            return start + UInt64(index)
        }
        throw .invalid("Could not locate UDIF trailer in dmg file")
    }

    /// Reads the table of the image in `file`.
    static func read(_ file: BlockNode) throws(BlockError) -> DmgTable {
        let koly = try findTrailer(file)
        var trailer = try ReadOnlyImage.bytes(file, at: koly, count: Int(min(512, file.length - koly)))
        trailer += [UInt8](repeating: 0, count: 512 - trailer.count)
        let dataFork = ReadOnlyImage.be64(trailer, 0x18)
        guard dataFork <= koly else { throw .invalid("dmg: the data fork offset \(dataFork) lies past the UDIF trailer") }
        let rsrcOffset = ReadOnlyImage.be64(trailer, 0x28)
        let rsrcLength = ReadOnlyImage.be64(trailer, 0x30)
        guard rsrcOffset < koly, rsrcLength <= koly - rsrcOffset else {
            throw .invalid("dmg: the resource fork (\(rsrcOffset)+\(rsrcLength)) lies past the UDIF trailer")
        }
        let xmlOffset = ReadOnlyImage.be64(trailer, 0xd8)
        let xmlLength = ReadOnlyImage.be64(trailer, 0xe0)
        guard xmlOffset < koly, xmlLength <= koly - xmlOffset else {
            throw .invalid("dmg: the property list (\(xmlOffset)+\(xmlLength)) lies past the UDIF trailer")
        }
        var table = DmgTable()
        table.sectors = ReadOnlyImage.be64(trailer, 0x1ec)
        guard table.sectors <= UInt64(Int64.max) / 512 else { throw .invalid("dmg: the sector count \(table.sectors) is absurd") }
        if rsrcLength != 0 {
            try table.readResourceFork(file, at: rsrcOffset, length: rsrcLength, dataFork: dataFork)
        } else if xmlLength != 0 {
            try table.readPropertyList(file, at: xmlOffset, length: xmlLength, dataFork: dataFork)
        } else {
            throw .invalid("dmg: the UDIF trailer names neither a resource fork nor a property list")
        }
        table.chunks.sort { $0.sector < $1.sector }
        return table
    }

    private mutating func readResourceFork(_ file: BlockNode, at begin: UInt64, length: UInt64, dataFork: UInt64) throws(BlockError) {
        let head = try ReadOnlyImage.bytes(file, at: begin, count: 12)
        let dataOffset = UInt64(ReadOnlyImage.be32(head, 0))
        let dataLength = UInt64(ReadOnlyImage.be32(head, 8))
        guard dataOffset <= length else { throw .invalid("dmg: the resource data offset \(dataOffset) lies past the resource fork") }
        guard dataLength != 0, dataOffset + dataLength <= length else {
            throw .invalid("dmg: the resource data length \(dataLength) does not fit the resource fork")
        }
        var offset = begin + dataOffset
        let end = offset + dataLength
        while offset < end {
            let count = UInt64(ReadOnlyImage.be32(try ReadOnlyImage.bytes(file, at: offset, count: 4), 0))
            guard count != 0, count <= end - offset else {
                throw .invalid("dmg: a resource at \(offset) has the invalid length \(count)")
            }
            guard count <= DmgTable.maxInfoLength else { throw .invalid("dmg: a resource at \(offset) is too large (\(count) bytes)") }
            offset += 4
            try readMish(try ReadOnlyImage.bytes(file, at: offset, count: Int(count)), dataFork: dataFork)
            offset += count
        }
    }

    private mutating func readPropertyList(_ file: BlockNode, at begin: UInt64, length: UInt64, dataFork: UInt64) throws(BlockError) {
        guard length <= DmgTable.maxInfoLength else { throw .invalid("dmg: the property list is too large (\(length) bytes)") }
        let text = try ReadOnlyImage.bytes(file, at: begin, count: Int(length))
        let open = Array("<data>".utf8)
        let close = Array("</data>".utf8)
        var position = 0
        while let start = DmgTable.find(open, in: text, from: position) {
            guard let stop = DmgTable.find(close, in: text, from: start + open.count) else {
                throw .invalid("dmg: the property list is malformed (a <data> without </data>)")
            }
            try readMish(Base64.decode(text[(start + open.count)..<stop], strict: false) ?? [], dataFork: dataFork)
            position = stop + close.count
        }
    }

    /// Adds the chunks of one `mish` block; anything else (another resource) is skipped.
    private mutating func readMish(_ block: [UInt8], dataFork: UInt64) throws(BlockError) {
        guard block.count >= 244, ReadOnlyImage.be32(block, 0) == 0x6d69_7368 else { return }
        let firstSector = ReadOnlyImage.be64(block, 8)
        let base = dataFork &+ ReadOnlyImage.be64(block, 0x18)
        var offset = 204
        while offset + 40 <= block.count {
            defer { offset += 40 }
            let type = ReadOnlyImage.be32(block, offset)
            if type == DmgChunk.comment || type == DmgChunk.last { continue }
            let chunk = DmgChunk(
                type: type,
                sector: ReadOnlyImage.be64(block, offset + 8) &+ firstSector,
                sectorCount: ReadOnlyImage.be64(block, offset + 0x10),
                offset: ReadOnlyImage.be64(block, offset + 0x18) &+ base,
                length: ReadOnlyImage.be64(block, offset + 0x20))
            let index = chunks.count
            if !chunk.readsZeroes && chunk.sectorCount > DmgTable.maxSectorCount {
                throw .invalid("sector count \(chunk.sectorCount) for chunk \(index) is larger than max (\(DmgTable.maxSectorCount))")
            }
            guard chunk.length <= DmgTable.maxLength else {
                throw .invalid("length \(chunk.length) for chunk \(index) is larger than max (\(DmgTable.maxLength))")
            }
            guard chunk.sector <= UInt64(Int64.max) / 512, chunk.sectorCount <= UInt64(Int64.max) / 512 - chunk.sector else {
                throw .invalid("dmg: chunk \(index) covers absurd sectors")
            }
            if ![DmgChunk.zeroes, DmgChunk.raw, DmgChunk.ignore, DmgChunk.zlib, DmgChunk.bzip2].contains(type) {
                unreadableTypes.insert(type)
            }
            if chunk.sectorCount > 0 { chunks.append(chunk) }
        }
    }

    /// The index of the chunk holding `sector`, or nil.
    func chunkIndex(holding sector: UInt64) -> Int? {
        var low = 0
        var high = chunks.count
        while low < high {
            let middle = (low + high) / 2
            if chunks[middle].sector + chunks[middle].sectorCount <= sector {
                low = middle + 1
            } else {
                high = middle
            }
        }
        guard low < chunks.count, chunks[low].sector <= sector else { return nil }
        return low
    }

    static func find(_ needle: [UInt8], in haystack: [UInt8], from start: Int) -> Int? {
        guard needle.count <= haystack.count else { return nil }
        var index = start
        while index + needle.count <= haystack.count {
            if haystack[index] == needle[0] && haystack[index..<index + needle.count].elementsEqual(needle) { return index }
            index += 1
        }
        return nil
    }
}
