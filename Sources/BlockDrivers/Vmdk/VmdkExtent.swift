import BlockCore

/// Where one grain of a sparse extent is.
enum VmdkGrain: Equatable {
    /// No grain table entry: read from the backing file, or zeroes.
    case unallocated
    /// The zeroed-grain entry: reads as zeroes, never from the backing file.
    case zeroed
    /// Plain data at this byte offset of the extent's file.
    case data(host: UInt64)
    /// A compressed grain (with its marker when the extent has markers) at this byte offset.
    case compressed(host: UInt64)
}

/// One extent of a VMDK image: a range of the virtual disk held by a flat file, a sparse extent
/// (grain directory, grain tables, grains) or nothing (`ZERO`).
///
/// `@unchecked Sendable`: the mutable table state is guarded by the owning driver's lock; the rest
/// is immutable.
final class VmdkExtent: @unchecked Sendable {
    enum Kind {
        /// Data at `offset` bytes into the file.
        case flat(offset: UInt64)
        case sparse
        case zero
    }

    let kind: Kind
    /// The file node holding the extent (nil for `ZERO`).
    let file: BlockNode?
    /// The guest range: first byte and length.
    let start: UInt64
    let length: UInt64
    /// The type word of its descriptor line (`FLAT`, `SPARSE`...), empty for a monolithic sparse file.
    let typeName: String
    /// Sparse extents: the header and derived sizes.
    let header: VmdkSparseHeader?
    let grainSize: UInt64
    let gtes: Int
    /// Grain directory and redundant directory entries (sectors of grain tables); guarded by the lock.
    var directory: [UInt32]
    var redundant: [UInt32]?
    /// Loaded grain tables by sector; guarded by the lock.
    private var tables: [UInt32: [UInt32]] = [:]
    /// The sector where the next grain goes; guarded by the lock.
    var nextSector: UInt64
    /// Most grain tables held in memory at once (2 KiB each with 512 entries).
    static let tableCacheLimit = 8192

    init(kind: Kind, file: BlockNode?, start: UInt64, length: UInt64, typeName: String,
         header: VmdkSparseHeader? = nil, directory: [UInt32] = [], redundant: [UInt32]? = nil) {
        self.kind = kind
        self.file = file
        self.start = start
        self.length = length
        self.typeName = typeName
        self.header = header
        self.grainSize = (header?.grainSectors ?? 0) * 512
        self.gtes = Int(header?.gtesPerGT ?? 0)
        self.directory = directory
        self.redundant = redundant
        let grain = max(header?.grainSectors ?? 1, 1)
        let fileSectors = ((file?.length ?? 0) + 511) / 512
        self.nextSector = (fileSectors + grain - 1) / grain * grain
    }

    var end: UInt64 { start + length }
    var compressed: Bool { header?.compressed ?? false }
    var zeroGrain: Bool { (header?.flags ?? 0) & VmdkSparseHeader.flagZeroGrain != 0 }
    var hasMarkers: Bool { (header?.flags ?? 0) & VmdkSparseHeader.flagMarkers != 0 }

    // MARK: - Tables (the driver's lock is held)

    /// The grain table at `sector`, loaded on first use.
    func table(at sector: UInt32) throws(BlockError) -> [UInt32] {
        if let table = tables[sector] { return table }
        guard let file else { throw .io("vmdk: extent without a file") }
        let offset = UInt64(sector) * 512
        let count = gtes * 4
        guard offset <= file.length, UInt64(count) <= file.length - offset else {
            throw .io("vmdk: grain table at \(offset) lies past the end of '\(file.driver.filename)'")
        }
        var bytes = [UInt8](repeating: 0, count: count)
        try bytes.withMutableBytes { (raw) throws(BlockError) in try file.read(into: raw, at: offset) }
        let table = bytes.withUnsafeBytes { raw in (0..<gtes).map { VmdkBytes.u32(raw, $0 * 4) } }
        if tables.count >= Self.tableCacheLimit { tables.removeAll(keepingCapacity: true) }
        tables[sector] = table
        return table
    }

    /// Where grain `index` (counted from the extent's start) is.
    func grain(_ index: UInt64) throws(BlockError) -> VmdkGrain {
        let directoryIndex = Int(index / UInt64(gtes))
        guard directoryIndex < directory.count else { throw .io("vmdk: grain \(index) lies outside the grain directory") }
        let sector = directory[directoryIndex]
        if sector == 0 { return .unallocated }
        let entry = try table(at: sector)[Int(index % UInt64(gtes))]
        if entry == 0 { return .unallocated }
        if entry == 1 && zeroGrain { return .zeroed }
        return compressed ? .compressed(host: UInt64(entry) * 512) : .data(host: UInt64(entry) * 512)
    }

    /// Sets the table entry of grain `index` in the grain table and in the redundant one.
    func setEntry(_ index: UInt64, to value: UInt32) throws(BlockError) {
        guard let file else { throw .io("vmdk: extent without a file") }
        let directoryIndex = Int(index / UInt64(gtes))
        let slot = Int(index % UInt64(gtes))
        if directory[directoryIndex] == 0 { try allocateTables(directoryIndex) }
        var bytes = [UInt8](repeating: 0, count: 4)
        VmdkBytes.put(value, &bytes, 0)
        let sector = directory[directoryIndex]
        try bytes.withBytes { (raw) throws(BlockError) in
            try file.write(raw, at: UInt64(sector) * 512 + UInt64(slot) * 4, fua: false)
            if let redundant, redundant[directoryIndex] != 0 {
                try file.write(raw, at: UInt64(redundant[directoryIndex]) * 512 + UInt64(slot) * 4, fua: false)
            }
        }
        var table = try self.table(at: sector)
        table[slot] = value
        tables[sector] = table
    }

    /// Takes `count` sectors at the end of the extent's file, growing the file to hold them.
    func takeSectors(_ count: UInt64) throws(BlockError) -> UInt64 {
        let sector = nextSector
        guard sector + count <= UInt64(UInt32.max) else { throw .init(errno: 28, "vmdk: the extent is full (grain offsets beyond 2 TiB)") }
        if let file, file.length < (sector + count) * 512 { try file.resize(to: (sector + count) * 512) }
        nextSector += count
        return sector
    }

    /// Gives an absent grain table (directory entry 0) a zeroed table, in both directories.
    private func allocateTables(_ directoryIndex: Int) throws(BlockError) {
        guard let file, let header else { throw .io("vmdk: extent without a file") }
        let tableSectors = (UInt64(gtes) * 4 + 511) / 512
        let zeroes = [UInt8](repeating: 0, count: Int(tableSectors * 512))
        var entry = [UInt8](repeating: 0, count: 4)
        func place(at directoryOffset: UInt64) throws(BlockError) -> UInt32 {
            let sector = try takeSectors(tableSectors)
            try zeroes.withBytes { (raw) throws(BlockError) in try file.write(raw, at: sector * 512, fua: false) }
            VmdkBytes.put(UInt32(sector), &entry, 0)
            try entry.withBytes { (raw) throws(BlockError) in
                try file.write(raw, at: directoryOffset * 512 + UInt64(directoryIndex) * 4, fua: false)
            }
            return UInt32(sector)
        }
        if redundant != nil, redundant![directoryIndex] == 0 {
            redundant![directoryIndex] = try place(at: header.rgdOffset)
        }
        directory[directoryIndex] = try place(at: header.gdOffset)
        tables[directory[directoryIndex]] = [UInt32](repeating: 0, count: gtes)
    }
}
