import BlockCore
import LogOptionsClock

/// What one guest cluster maps to.
enum Qcow2ClusterState: Equatable {
    /// Data at a host offset; `owned` when its refcount is exactly one (writes go in place).
    case data(host: UInt64, owned: Bool)
    /// Reads as zeroes (v3 zero flag), possibly with a preallocated host cluster.
    case zero(host: UInt64?)
    /// Not allocated here: read from the backing file, or zeroes without one.
    case unallocated
    /// Compressed data: the raw L2 descriptor.
    case compressed(UInt64)
}

extension Qcow2Metadata {
    /// Guest cluster index → (L1 index, L2 index).
    @inline(__always)
    func split(_ guestCluster: UInt64) -> (Int, Int) {
        (Int(guestCluster / UInt64(l2Entries)), Int(guestCluster % UInt64(l2Entries)))
    }

    /// The raw L2 entry of a guest cluster (0 when its L2 table is absent), checked against the format:
    /// an L1 or L2 entry with reserved bits set or an unaligned offset fails with EIO and marks the
    /// image corrupt, so no request is ever served from metadata the image does not really hold.
    func l2Entry(_ guestCluster: UInt64) throws(BlockError) -> UInt64 {
        let (l1Index, l2Index) = split(guestCluster)
        guard l1Index < l1.count else { return 0 }
        let l1Entry = l1[l1Index]
        let l2Offset = l1Entry & Qcow2Metadata.offsetMask
        if l1Entry & Qcow2Metadata.l1Reserved != 0 || l2Offset & UInt64(clusterSize - 1) != 0 {
            throw corruption("L1 entry \(l1Index) (0x\(String(l1Entry, radix: 16))) is invalid: reserved bits or an unaligned L2 table offset",
                             offset: header.l1TableOffset + UInt64(l1Index) * 8)
        }
        guard l2Offset != 0 else { return 0 }
        let entry = try table(l2Cache, at: l2Offset, what: "L2 table").word(l2Index)
        if !staleEntries.isEmpty, staleEntries[l2Offset]?.contains(l2Index) == true {
            throw corruption("L2 entry \(l2Index) of the table at \(l2Offset) points past the end the image file had when it was opened",
                             offset: l2Offset + UInt64(l2Index) * 8)
        }
        guard entry & Qcow2Metadata.compressedFlag == 0 else { return entry }
        let host = entry & Qcow2Metadata.offsetMask
        let reserved = header.version >= 3 ? Qcow2Metadata.l2Reserved : Qcow2Metadata.l2Reserved | Qcow2Metadata.zeroFlag
        if entry & reserved != 0 || host & UInt64(clusterSize - 1) != 0 {
            throw corruption("L2 entry \(l2Index) of the table at \(l2Offset) (0x\(String(entry, radix: 16))) is invalid: reserved bits or an unaligned cluster offset",
                             offset: l2Offset + UInt64(l2Index) * 8)
        }
        return entry
    }

    /// Records metadata that breaks the format: the image takes no more writes (the corrupt bit is set
    /// when the file is writable), `BLOCK_IMAGE_CORRUPTED` is raised once, and the request fails with EIO.
    func corruption(_ problem: String, offset: UInt64?) -> BlockError {
        if !corrupt {
            corrupt = true
            try? markCorrupt()
            Log.error("qcow2 image '\(file.driver.filename)': \(problem); image marked corrupt")
            events?.send(.imageCorrupted(nodeName: nodeName, message: problem, offset: offset, size: offset.map { _ in 8 }, fatal: true))
        }
        return .io("qcow2: \(problem)")
    }

    /// Decodes an L2 entry.
    func state(of entry: UInt64) -> Qcow2ClusterState {
        if entry & Qcow2Metadata.compressedFlag != 0 { return .compressed(entry) }
        let host = entry & Qcow2Metadata.offsetMask
        if header.version >= 3 && entry & Qcow2Metadata.zeroFlag != 0 { return .zero(host: host == 0 ? nil : host) }
        if host == 0 { return .unallocated }
        return .data(host: host, owned: entry & Qcow2Metadata.copiedFlag != 0)
    }

    /// The L2 table of a guest cluster, owned by the active L1 table (created, or copied from a table
    /// shared with a snapshot, when needed), ready for entries to be changed.
    func writableL2(_ guestCluster: UInt64) throws(BlockError) -> Qcow2CachedTable {
        let (l1Index, _) = split(guestCluster)
        guard l1Index < l1.count else { throw .invalid("qcow2: cluster \(guestCluster) is past the L1 table") }
        let entry = l1[l1Index]
        let oldOffset = entry & Qcow2Metadata.offsetMask
        if oldOffset != 0 && entry & Qcow2Metadata.copiedFlag != 0 {
            return try table(l2Cache, at: oldOffset, what: "L2 table")
        }
        let bytes = oldOffset == 0 ? [UInt8](repeating: 0, count: clusterSize)
            : try table(l2Cache, at: oldOffset, what: "L2 table").bytes
        if oldOffset != 0 { file.debugEvent(.l2AllocCowRead) }
        let newOffset = try allocate(1)
        try checkOverlap(newOffset, count: 1)
        file.debugEvent(.l2AllocWrite)
        try writeBytes(bytes, at: newOffset)
        writtenL2Tables.insert(newOffset)
        if oldOffset != 0, let stale = staleEntries[oldOffset] { staleEntries[newOffset] = stale }
        let fresh = Qcow2CachedTable(bytes: bytes)
        if let evicted = l2Cache.insert(newOffset, fresh), evicted.table.dirty {
            try writeBack(evicted.table, at: evicted.offset, isL2: true)
        }
        l1[l1Index] = newOffset | Qcow2Metadata.copiedFlag
        l1Dirty = true
        if oldOffset != 0 { pendingFrees.append(oldOffset >> UInt64(clusterBits)) }
        return fresh
    }

    /// Sets the L2 entry of a guest cluster, queueing the release of what it pointed at before.
    func replaceEntry(_ guestCluster: UInt64, with entry: UInt64) throws(BlockError) {
        let table = try writableL2(guestCluster)
        let index = split(guestCluster).1
        release(table.word(index))
        table.setWord(index, entry)
    }

    /// Queues the host clusters an L2 entry held for release at the next flush.
    func release(_ entry: UInt64) {
        switch state(of: entry) {
        case .data(let host, _), .zero(.some(let host)):
            pendingFrees.append(host >> UInt64(clusterBits))
        case .compressed(let descriptor):
            let range = compressedRange(descriptor)
            let first = range.lowerBound >> UInt64(clusterBits)
            let last = (range.upperBound - 1) >> UInt64(clusterBits)
            pendingFrees += (first...last).map { $0 }
        default:
            break
        }
    }

    /// The host bytes a compressed cluster's data may occupy.
    func compressedRange(_ descriptor: UInt64) -> Range<UInt64> {
        let offsetBits = 62 - (clusterBits - 8)
        let host = descriptor & ((1 << UInt64(offsetBits)) - 1)
        let sectors = (descriptor & ~Qcow2Metadata.copiedFlag & ~Qcow2Metadata.compressedFlag) >> UInt64(offsetBits)
        let end = (host & ~511) + (sectors + 1) * 512
        return host..<end
    }

    /// Refuses to write an L2 table or refcount block where other metadata lies (a table entry that
    /// points at the header, the L1 or refcount table, or a cached table of the other kind).
    func checkTableWrite(at offset: UInt64, isL2: Bool) throws(BlockError) {
        guard overlapCheck != .none else { return }
        let other = isL2 ? refcountCache : l2Cache
        if isFixedMetadata(offset >> UInt64(clusterBits)) || (overlapCheck != .constant && other.contains(offset)) {
            throw corruption("Preventing invalid write of \(isL2 ? "an L2 table" : "a refcount block") at offset \(offset) (overlaps metadata)",
                             offset: offset)
        }
    }

    /// Refuses a data write over metadata: marks the image corrupt instead (overlap-check).
    func checkOverlap(_ offset: UInt64, count: Int) throws(BlockError) {
        guard overlapCheck != .none else { return }
        for index in 0..<UInt64(count) {
            let cluster = (offset >> UInt64(clusterBits)) + index
            let clusterOffset = cluster << UInt64(clusterBits)
            if isFixedMetadata(cluster)
                || (overlapCheck == .all || overlapCheck == .cached) && (l2Cache.contains(clusterOffset) || refcountCache.contains(clusterOffset)) {
                corrupt = true
                try? markCorrupt()
                let message = "Preventing invalid allocation of L2 table or data at offset \(clusterOffset) (overlaps metadata)"
                events?.send(.imageCorrupted(nodeName: nodeName, message: message, offset: clusterOffset,
                                             size: UInt64(clusterSize), fatal: true))
                throw .io("qcow2: allocation at \(clusterOffset) would overwrite metadata; image marked corrupt")
            }
        }
    }

    /// Sets the corrupt bit in the header (v3, when the file is writable).
    func markCorrupt() throws(BlockError) {
        guard header.version >= 3, !file.readOnly else { return }
        header.incompatibleFeatures |= Qcow2Header.corruptBit
        var bytes = [UInt8](repeating: 0, count: 8)
        bytes.withUnsafeMutableBytes { Qcow2Bytes.put(header.incompatibleFeatures, $0, 0) }
        try writeBytes(bytes, at: 72)
        try file.flush()
        Log.error("qcow2 image '\(file.driver.filename)' marked corrupt: further writes refused")
    }

    /// Makes every metadata change stable in the order that keeps the image consistent across a crash:
    /// refcount increases, then the tables that point at new clusters, then the refcount decreases of
    /// clusters no longer pointed at.
    func writeBackAll(canFree: Bool) throws(BlockError) {
        try writeDirtyRefcounts()
        try file.flush()
        for (offset, table) in l2Cache.dirtyTables {
            try checkTableWrite(at: offset, isL2: true)
            file.debugEvent(.l2Update)
            try writeBytes(table.bytes, at: offset)
            table.dirty = false
            writtenL2Tables.insert(offset)
        }
        if l1Dirty {
            file.debugEvent(.l1Update)
            var bytes = Qcow2Bytes.bytes(l1)
            bytes += [UInt8](repeating: 0, count: (8 - bytes.count % 8) % 8)
            try writeBytes(bytes, at: header.l1TableOffset)
            l1Dirty = false
        }
        try file.flush()
        guard canFree, !pendingFrees.isEmpty else { return }
        let frees = pendingFrees
        pendingFrees = []
        for cluster in frees {
            file.debugEvent(.clusterFree)
            let count = try refcount(cluster)
            guard count > 0 else {
                Log.error("qcow2: refcount of cluster \(cluster) is already 0 on release")
                continue
            }
            try setRefcount(cluster, count - 1)
            if count == 1 {
                l2Cache.remove(cluster << UInt64(clusterBits))
                if passDiscard {
                    try? file.discard(at: cluster << UInt64(clusterBits), length: UInt64(clusterSize))
                }
            }
        }
        try writeDirtyRefcounts()
        try file.flush()
    }

    /// True when some metadata change is not yet on disk.
    var hasUnwrittenMetadata: Bool {
        l1Dirty || !pendingFrees.isEmpty || refcountCache.hasDirty || l2Cache.hasDirty
    }
}

/// Which writes are checked against metadata (`overlap-check`).
enum Qcow2OverlapCheck: String {
    case none, constant, cached, all
}
