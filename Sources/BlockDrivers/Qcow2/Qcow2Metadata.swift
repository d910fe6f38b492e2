import BlockCore

/// The metadata of an open qcow2 image: header, L1 table, refcount table and the caches of L2 tables
/// and refcount blocks. Every member is guarded by the driver's metadata lock.
final class Qcow2Metadata {
    let file: BlockNode
    var header: Qcow2Header
    let clusterBits: Int
    let clusterSize: Int
    /// L2 entries per table.
    let l2Entries: Int
    /// Refcount entries per refcount block.
    let refcountEntries: Int
    let maxRefcount: UInt64
    var l1: [UInt64]
    var l1Dirty = false
    var refcountTable: [UInt64]
    let l2Cache: Qcow2TableCache
    let refcountCache: Qcow2TableCache
    /// Host clusters whose reference was dropped; their refcounts fall at the next flush, after the
    /// tables that no longer point at them are stable (so a crash leaks, never corrupts).
    var pendingFrees: [UInt64] = []
    /// Lowest host cluster index that may be free.
    var freeHint: UInt64 = 0
    /// Host bytes in use: every cluster below this may be referenced.
    var overlapCheck: Qcow2OverlapCheck
    /// Punch holes in the file for freed clusters.
    var passDiscard: Bool
    /// Set when a write would have hit metadata: the image is read-only from then on.
    var corrupt = false
    /// End of the last compressed cluster written, where the next one may be packed.
    var compressedCursor: UInt64?
    /// Where BLOCK_IMAGE_CORRUPTED goes, and the node it names.
    var events: BlockEventSink?
    var nodeName = ""
    /// The file's length when the image was opened. Clusters at or past it were all allocated by this
    /// driver, so an entry loaded from the image that points there is stale: once the file has grown,
    /// it would name another cluster's data.
    let lengthAtOpen: UInt64
    /// The snapshot table and the snapshots' L1 tables (read-write opens): never written over, never allocated.
    var protectedRegions: [(start: UInt64, length: UInt64)] = []
    /// L2 tables this driver wrote: their entries are its own, so they need no check when read again.
    var writtenL2Tables = Set<UInt64>()
    /// Set when the image may grow (read-write): L2 entries loaded from the image are then checked
    /// against `lengthAtOpen`. A read-only image never grows, so a read past its end simply fails.
    var checksStaleEntries = false
    /// Host offsets of the L2 entries found pointing past `lengthAtOpen`, by L2 table offset: using
    /// one is a corruption (EIO), whatever the file holds there by then.
    var staleEntries: [UInt64: Set<Int>] = [:]

    init(file: BlockNode, header: Qcow2Header, l1: [UInt64], refcountTable: [UInt64],
         l2CacheClusters: Int, refcountCacheClusters: Int, overlapCheck: Qcow2OverlapCheck, passDiscard: Bool) {
        self.file = file
        self.header = header
        self.clusterBits = Int(header.clusterBits)
        self.clusterSize = 1 << Int(header.clusterBits)
        self.l2Entries = clusterSize / 8
        self.refcountEntries = clusterSize * 8 / header.refcountBits
        self.maxRefcount = header.refcountBits == 64 ? UInt64.max : (1 << UInt64(header.refcountBits)) - 1
        self.l1 = l1
        self.refcountTable = refcountTable
        self.l2Cache = Qcow2TableCache(capacity: l2CacheClusters, clusterSize: clusterSize)
        self.refcountCache = Qcow2TableCache(capacity: refcountCacheClusters, clusterSize: clusterSize)
        self.overlapCheck = overlapCheck
        self.passDiscard = passDiscard
        self.lengthAtOpen = file.length
    }

    static let offsetMask: UInt64 = 0x00ff_ffff_ffff_fe00
    static let copiedFlag: UInt64 = 1 << 63
    static let compressedFlag: UInt64 = 1 << 62
    static let zeroFlag: UInt64 = 1
    /// Bits of an L1 entry that must be zero (1-8 and 56-62; bit 0 too).
    static let l1Reserved: UInt64 = 0x7f00_0000_0000_01ff
    /// Bits of a standard L2 entry that must be zero (1-8 and 56-61; bit 0 too before version 3).
    static let l2Reserved: UInt64 = 0x3f00_0000_0000_01fe
    /// Bits of a refcount table entry that must be zero (0-8).
    static let refcountTableReserved: UInt64 = 0x1ff

    // MARK: - Reading and writing clusters of the file

    func readCluster(at offset: UInt64, what: String) throws(BlockError) -> [UInt8] {
        guard offset <= file.length, UInt64(clusterSize) <= file.length - offset else {
            throw .io("qcow2: \(what) at \(offset) lies past the end of the image file (\(file.length) bytes)")
        }
        var bytes = [UInt8](repeating: 0, count: clusterSize)
        try bytes.withMutableBytes { (raw) throws(BlockError) in try file.read(into: raw, at: offset) }
        return bytes
    }

    func writeBytes(_ bytes: [UInt8], at offset: UInt64) throws(BlockError) {
        try ensureFileLength(offset + UInt64(bytes.count))
        try bytes.withBytes { (raw) throws(BlockError) in try file.write(raw, at: offset, fua: false) }
    }

    /// Grows the image file so that `end` bytes can be written.
    func ensureFileLength(_ end: UInt64) throws(BlockError) {
        if end > file.length { try file.resize(to: end) }
    }

    // MARK: - Tables through the caches

    func table(_ cache: Qcow2TableCache, at offset: UInt64, what: String) throws(BlockError) -> Qcow2CachedTable {
        if let table = cache.cached(offset) { return table }
        file.debugEvent(cache === l2Cache ? .l2Load : .refblockLoad)
        let table = Qcow2CachedTable(bytes: try readCluster(at: offset, what: what))
        if checksStaleEntries && cache === l2Cache && !writtenL2Tables.contains(offset) { noteStaleEntries(table, at: offset) }
        if let evicted = cache.insert(offset, table), evicted.table.dirty {
            try writeBack(evicted.table, at: evicted.offset, isL2: cache === l2Cache)
        }
        return table
    }

    /// Writes one dirty table; an L2 table goes out only after the refcounts it relies on are stable.
    func writeBack(_ table: Qcow2CachedTable, at offset: UInt64, isL2: Bool) throws(BlockError) {
        try checkTableWrite(at: offset, isL2: isL2)
        if isL2 && refcountCache.hasDirty {
            try writeDirtyRefcounts()
            try file.flush()
        }
        file.debugEvent(isL2 ? .l2Update : .refblockUpdate)
        try writeBytes(table.bytes, at: offset)
        table.dirty = false
        if isL2 { writtenL2Tables.insert(offset) }
    }

    /// Records the entries of an L2 table read from the image that point at or past the end the file
    /// had at open (see `lengthAtOpen`): `l2Entry` refuses them.
    func noteStaleEntries(_ table: Qcow2CachedTable, at offset: UInt64) {
        for index in 0..<l2Entries {
            let entry = table.word(index)
            guard entry != 0 else { continue }
            let host = entry & Qcow2Metadata.compressedFlag != 0 ? compressedRange(entry).lowerBound : entry & Qcow2Metadata.offsetMask
            if host >= lengthAtOpen { staleEntries[offset, default: []].insert(index) }
        }
    }

    func writeDirtyRefcounts() throws(BlockError) {
        for (offset, table) in refcountCache.dirtyTables {
            try checkTableWrite(at: offset, isL2: false)
            file.debugEvent(.refblockUpdate)
            try writeBytes(table.bytes, at: offset)
            table.dirty = false
        }
    }

    // MARK: - Refcounts

    @inline(__always)
    private func refcountValue(_ table: Qcow2CachedTable, _ index: Int) -> UInt64 {
        let bits = header.refcountBits
        switch bits {
        case 64: return table.word(index)
        case 32: return UInt64(table.bytes.withUnsafeBytes { Qcow2Bytes.u32($0, index * 4) })
        case 16: return UInt64(table.bytes.withUnsafeBytes { Qcow2Bytes.u16($0, index * 2) })
        case 8: return UInt64(table.bytes[index])
        default:
            let perByte = 8 / bits
            let shift = (index % perByte) * bits
            return UInt64((table.bytes[index / perByte] >> UInt8(shift)) & UInt8((1 << bits) - 1))
        }
    }

    private func setRefcountValue(_ table: Qcow2CachedTable, _ index: Int, _ value: UInt64) {
        let bits = header.refcountBits
        switch bits {
        case 64: table.setWord(index, value)
        case 32: table.bytes.withUnsafeMutableBytes { Qcow2Bytes.put(UInt32(value), $0, index * 4) }
        case 16: table.bytes.withUnsafeMutableBytes { Qcow2Bytes.put(UInt16(value), $0, index * 2) }
        case 8: table.bytes[index] = UInt8(value)
        default:
            let perByte = 8 / bits
            let shift = UInt8((index % perByte) * bits)
            let mask = UInt8((1 << bits) - 1) << shift
            table.bytes[index / perByte] = (table.bytes[index / perByte] & ~mask) | (UInt8(value) << shift & mask)
        }
        table.dirty = true
    }

    /// The refcount of host cluster `cluster`.
    func refcount(_ cluster: UInt64) throws(BlockError) -> UInt64 {
        let tableIndex = Int(cluster / UInt64(refcountEntries))
        guard tableIndex < refcountTable.count else { return 0 }
        let blockOffset = try refcountBlockOffset(tableIndex)
        guard blockOffset != 0 else { return 0 }
        let block = try table(refcountCache, at: blockOffset, what: "refcount block")
        return refcountValue(block, Int(cluster % UInt64(refcountEntries)))
    }

    /// Sets the refcount of host cluster `cluster`, creating the refcount block (and growing the
    /// refcount table) when needed.
    func setRefcount(_ cluster: UInt64, _ value: UInt64) throws(BlockError) {
        guard value <= maxRefcount else {
            throw .io("qcow2: refcount of cluster \(cluster) would overflow its \(header.refcountBits)-bit width")
        }
        let tableIndex = Int(cluster / UInt64(refcountEntries))
        if tableIndex >= refcountTable.count { try growRefcountTable(toCover: tableIndex) }
        var blockOffset = try refcountBlockOffset(tableIndex)
        if blockOffset == 0 {
            blockOffset = try createRefcountBlock(tableIndex)
        }
        let block = try table(refcountCache, at: blockOffset, what: "refcount block")
        setRefcountValue(block, Int(cluster % UInt64(refcountEntries)), value)
        if value == 0 && cluster < freeHint { freeHint = cluster }
    }

    /// The offset of the refcount block of table entry `index` (0 when there is none), checked
    /// against the format: reserved bits or an unaligned offset mark the image corrupt.
    func refcountBlockOffset(_ index: Int) throws(BlockError) -> UInt64 {
        let entry = refcountTable[index]
        let offset = entry & ~Qcow2Metadata.refcountTableReserved
        if entry & Qcow2Metadata.refcountTableReserved != 0 || offset & UInt64(clusterSize - 1) != 0 {
            throw corruption("refcount table entry \(index) (0x\(String(entry, radix: 16))) is invalid: reserved bits or an unaligned refcount block offset",
                             offset: header.refcountTableOffset + UInt64(index) * 8)
        }
        return offset
    }

    /// Creates the refcount block for table entry `index` in the first cluster of the range it describes
    /// (free by definition, since nothing counts it), so the block describes itself.
    private func createRefcountBlock(_ index: Int) throws(BlockError) -> UInt64 {
        let first = UInt64(index) * UInt64(refcountEntries)
        let offset = first << UInt64(clusterBits)
        guard !isFixedMetadata(first) else {
            // Only a damaged refcount table lacks the block that counts the header or the tables.
            throw corruption("no refcount block counts cluster \(first), which holds the header or a table", offset: offset)
        }
        file.debugEvent(.refblockAlloc)
        let block = Qcow2CachedTable(bytes: [UInt8](repeating: 0, count: clusterSize))
        setRefcountValue(block, 0, 1)
        try writeBytes(block.bytes, at: offset)
        block.dirty = false
        if let evicted = refcountCache.insert(offset, block), evicted.table.dirty {
            try writeBack(evicted.table, at: evicted.offset, isL2: false)
        }
        refcountTable[index] = offset
        // The table entry goes out now: the block is written, and a refcount table entry pointing
        // at a block is harmless even if what the block counts is not yet referenced.
        try writeRefcountTableEntry(index)
        return offset
    }

    private func writeRefcountTableEntry(_ index: Int) throws(BlockError) {
        var entry = [UInt8](repeating: 0, count: 8)
        entry.withUnsafeMutableBytes { Qcow2Bytes.put(refcountTable[index], $0, 0) }
        try file.flush()
        try writeBytes(entry, at: header.refcountTableOffset + UInt64(index) * 8)
    }

    /// Moves the refcount table to a larger place at the end of the file.
    private func growRefcountTable(toCover index: Int) throws(BlockError) {
        file.debugEvent(.reftableGrow)
        var entries = max(refcountTable.count * 2, index + 1)
        let start = try endCluster()
        var clusters: UInt64
        var newBlocks: [Int]
        while true {
            clusters = UInt64((entries * 8 + clusterSize - 1) / clusterSize)
            // New blocks go right after the table; they must cover themselves and the table.
            newBlocks = []
            var used = start + clusters
            var changed = true
            while changed {
                changed = false
                let lastIndex = Int((used - 1) / UInt64(refcountEntries))
                for candidate in Int(start / UInt64(refcountEntries))...lastIndex
                where !newBlocks.contains(candidate) && (candidate >= refcountTable.count || refcountTable[candidate] == 0) {
                    newBlocks.append(candidate)
                    used += 1
                    changed = true
                }
            }
            if newBlocks.allSatisfy({ $0 < entries }) { break }
            entries *= 2
        }
        var newTable = refcountTable + [UInt64](repeating: 0, count: entries - refcountTable.count)
        for (position, blockIndex) in newBlocks.enumerated() {
            let offset = (start + clusters + UInt64(position)) << UInt64(clusterBits)
            newTable[blockIndex] = offset
            let block = Qcow2CachedTable(bytes: [UInt8](repeating: 0, count: clusterSize))
            block.dirty = true
            if let evicted = refcountCache.insert(offset, block), evicted.table.dirty {
                try writeBack(evicted.table, at: evicted.offset, isL2: false)
            }
        }
        let oldOffset = header.refcountTableOffset
        let oldClusters = UInt64(header.refcountTableClusters)
        refcountTable = newTable
        for cluster in start..<(start + clusters + UInt64(newBlocks.count)) { try setRefcount(cluster, 1) }
        try writeDirtyRefcounts()
        var tableBytes = Qcow2Bytes.bytes(newTable)
        tableBytes += [UInt8](repeating: 0, count: Int(clusters) * clusterSize - tableBytes.count)
        try writeBytes(tableBytes, at: start << UInt64(clusterBits))
        try file.flush()
        header.refcountTableOffset = start << UInt64(clusterBits)
        header.refcountTableClusters = UInt32(clusters)
        var fields = [UInt8](repeating: 0, count: 12)
        fields.withUnsafeMutableBytes { raw in
            Qcow2Bytes.put(header.refcountTableOffset, raw, 0)
            Qcow2Bytes.put(header.refcountTableClusters, raw, 8)
        }
        try writeBytes(fields, at: 48)
        try file.flush()
        let first = oldOffset >> UInt64(clusterBits)
        pendingFrees += (first..<(first + oldClusters)).map { $0 }
    }

    /// One past the last host cluster the file holds.
    func endCluster() throws(BlockError) -> UInt64 {
        (file.length + UInt64(clusterSize) - 1) >> UInt64(clusterBits)
    }

    /// Finds `count` contiguous free host clusters, sets their refcount to 1 and returns the first one's offset.
    func allocate(_ count: Int) throws(BlockError) -> UInt64 {
        var start: UInt64
        repeat {
            start = try findFreeRun(count)
        } while try ensureRefcountBlocks(start..<(start + UInt64(count)))
        file.debugEvent(.clusterAlloc)
        for index in 0..<UInt64(count) { try setRefcount(start + index, 1) }
        if start == freeHint { freeHint = start + UInt64(count) }
        let offset = start << UInt64(clusterBits)
        try ensureFileLength(offset + UInt64(count * clusterSize))
        return offset
    }

    /// The first run of `count` free clusters at or after the hint (clusters past the end of the file are free).
    private func findFreeRun(_ count: Int) throws(BlockError) -> UInt64 {
        let end = try endCluster()
        var start = freeHint
        var cluster = start
        while cluster < start + UInt64(count) && cluster < end {
            if try refcount(cluster) != 0 || isFixedMetadata(cluster) {
                start = cluster + 1
                if freeHint == cluster { freeHint = start }
            }
            cluster += 1
        }
        return start
    }

    /// Creates the refcount blocks that clusters in `range` need; true when one was created
    /// (it may sit inside the range, so the caller looks again).
    private func ensureRefcountBlocks(_ range: Range<UInt64>) throws(BlockError) -> Bool {
        var created = false
        let first = Int(range.lowerBound / UInt64(refcountEntries))
        let last = Int((range.upperBound - 1) / UInt64(refcountEntries))
        for index in first...last {
            if index >= refcountTable.count {
                try growRefcountTable(toCover: index)
                created = true
            }
            if try refcountBlockOffset(index) == 0 {
                _ = try createRefcountBlock(index)
                created = true
            }
        }
        return created
    }

    /// True for clusters the header, L1 table, refcount table or snapshot table occupy.
    func isFixedMetadata(_ cluster: UInt64) -> Bool {
        let offset = cluster << UInt64(clusterBits)
        if offset == 0 { return true }
        func within(_ start: UInt64, _ length: UInt64) -> Bool { offset + UInt64(clusterSize) > start && offset < start + length }
        return within(header.l1TableOffset, UInt64(header.l1Size) * 8)
            || within(header.refcountTableOffset, UInt64(header.refcountTableClusters) << UInt64(clusterBits))
            || protectedRegions.contains { within($0.start, $0.length) }
    }
}

extension Qcow2Metadata {
    /// Grows the L1 table (moving it to new clusters) so that it covers `size` guest bytes.
    func resizeL1(for size: UInt64) throws(BlockError) {
        let entries = Qcow2Header.l1Entries(covering: size, clusterBits: UInt32(clusterBits))
        guard entries * 8 <= Qcow2Header.maxL1Bytes else {
            throw .invalid("qcow2: a size of \(size) bytes needs an L1 table larger than \(Qcow2Header.maxL1Bytes >> 20) MiB")
        }
        let needed = Int(entries)
        guard needed > l1.count else { return }
        let clusters = (needed * 8 + clusterSize - 1) / clusterSize
        file.debugEvent(.l1GrowAllocTable)
        let newOffset = try allocate(clusters)
        try checkOverlap(newOffset, count: clusters)
        let newL1 = l1 + [UInt64](repeating: 0, count: needed - l1.count)
        var bytes = Qcow2Bytes.bytes(newL1)
        bytes += [UInt8](repeating: 0, count: clusters * clusterSize - bytes.count)
        try writeDirtyRefcounts()
        file.debugEvent(.l1GrowWriteTable)
        try writeBytes(bytes, at: newOffset)
        try file.flush()
        file.debugEvent(.l1GrowActivateTable)
        var fields = [UInt8](repeating: 0, count: 12)
        fields.withUnsafeMutableBytes { raw in
            Qcow2Bytes.put(UInt32(needed), raw, 0)
            Qcow2Bytes.put(newOffset, raw, 4)
        }
        try writeBytes(fields, at: 36)
        try file.flush()
        let oldFirst = header.l1TableOffset >> UInt64(clusterBits)
        let oldClusters = (Int(header.l1Size) * 8 + clusterSize - 1) / clusterSize
        if header.l1TableOffset != 0 && oldClusters > 0 {
            pendingFrees += (oldFirst..<(oldFirst + UInt64(oldClusters))).map { $0 }
        }
        header.l1Size = UInt32(needed)
        header.l1TableOffset = newOffset
        l1 = newL1
        l1Dirty = false
    }
}
