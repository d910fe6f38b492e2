import BlockCore
import LogOptionsClock

/// The persistent bitmaps of an open qcow2 image: what the directory held at open, and the node's
/// bitmap set whose persistent members are stored at close. Guarded by the driver's lock.
final class Qcow2BitmapState: @unchecked Sendable {
    /// The bitmaps loaded at open, until the node takes them.
    var loaded: [DirtyBitmap] = []
    /// The directory as it was at open (entries of inconsistent bitmaps are stored back unchanged).
    var directory: [Qcow2Bitmaps.Entry] = []
    /// The extension as it was at open, nil when there was none (or it was not valid).
    var ext: Qcow2Bitmaps.Extension?
    /// The node's bitmaps.
    var set: DirtyBitmapSet?
}

extension Qcow2Opener {
    /// Loads the bitmap directory of an image being opened (QEMU's `qcow2_load_dirty_bitmaps`):
    /// bitmaps marked in use (not stored cleanly) come back inconsistent; on a read-write open
    /// every other bitmap is loaded and marked in use on disk at once, so that a crash leaves them
    /// inconsistent, never silently stale. Read-only opens load them read-only.
    static func loadBitmaps(file: BlockNode, meta: Qcow2Metadata, readOnly: Bool, into state: Qcow2BitmapState) throws(BlockError) {
        guard let ext = Qcow2Bitmaps.extensionOf(meta.header) else {
            // No extension, or one a program without bitmap support left behind (autoclear bit clear):
            // it is not ours to keep.
            meta.header.otherExtensions.removeAll { $0.type == Qcow2Header.bitmapsExtension }
            return
        }
        let entries = try Qcow2Bitmaps.readDirectory(file: file, header: meta.header, extension: ext)
        let size = meta.header.size & ~511
        for entry in entries {
            let inconsistent = entry.flags & Qcow2Bitmaps.Entry.inUse != 0
            let bitmap = inconsistent
                ? DirtyBitmap(name: entry.name, granularity: 1 << UInt64(entry.granularityBits), size: size)
                : try Qcow2Bitmaps.load(file: file, header: meta.header, entry: entry, size: size)
            bitmap.setLoaded(persistent: true, inconsistent: inconsistent, readOnly: readOnly,
                             recording: !inconsistent && entry.flags & Qcow2Bitmaps.Entry.auto != 0)
            state.loaded.append(bitmap)
        }
        state.directory = entries
        state.ext = ext
        guard !readOnly, entries.contains(where: { $0.flags & Qcow2Bitmaps.Entry.inUse == 0 }) else { return }
        var marked = entries
        for index in marked.indices { marked[index].flags |= Qcow2Bitmaps.Entry.inUse }
        let bytes = marked.flatMap(\.bytes)
        guard UInt64(bytes.count) == ext.directorySize else {
            throw .invalid("the bitmap directory has \(ext.directorySize) bytes where its entries need \(bytes.count)")
        }
        try meta.writeBytes(bytes, at: ext.directoryOffset)
        try file.flush()
    }
}

extension Qcow2Driver {
    public func attachBitmaps(_ bitmaps: DirtyBitmapSet, nodeName: String) {
        lock.lock()
        let loaded = bitmapState.loaded
        bitmapState.loaded = []
        bitmapState.set = bitmaps
        lock.unlock()
        for bitmap in loaded {
            do throws(DirtyBitmapError) {
                try bitmaps.insert(bitmap)
            } catch {
                Log.error("qcow2 '\(filename)': \(error.message)")
            }
        }
    }

    public func persistentBitmapProblem(name: String, granularity: UInt64, nodeName: String) -> String? {
        let header = self.header
        if header.version < 3 { return "Can't make bitmap '\(name)' persistent in '\(nodeName)': Cannot store dirty bitmaps in qcow2 v2 files" }
        if readOnly { return "Can't store persistent bitmaps to \(nodeName): Operation not supported" }
        if name.utf8.count > 1023 {
            return "Can't make bitmap '\(name)' persistent in '\(nodeName)': Name length exceeds maximum (1023 characters)"
        }
        if granularity > 1 << 31 { return "Can't make bitmap '\(name)' persistent in '\(nodeName)': Granularity exceeds maximum (2147483648 bytes)" }
        let count = bitmapState.set?.all.filter(\.persistent).count ?? 0
        if count >= Qcow2Bitmaps.maxBitmaps {
            return "Can't make bitmap '\(name)' persistent in '\(nodeName)': Maximum number of persistent bitmaps is already reached"
        }
        return nil
    }

    /// Stores the persistent bitmaps (QEMU's `qcow2_store_persistent_dirty_bitmaps`), called at
    /// close with the lock held: new tables, data and directory first, made durable, then the header
    /// points at them with autoclear bit 0 set, then the old clusters are released. Inconsistent
    /// bitmaps keep their old entry (still in use). A crash at any point leaves either the old
    /// directory (every bitmap in use: inconsistent) or the new one, and at worst leaked clusters.
    func storeBitmapsAtClose() throws(BlockError) {
        guard !readOnly, let set = bitmapState.set else { return }
        let persistent = set.all.filter(\.persistent)
        guard !persistent.isEmpty || bitmapState.ext != nil else { return }
        guard meta.header.version >= 3 else { return }
        var entries: [Qcow2Bitmaps.Entry] = []
        var kept = Set<String>()
        for bitmap in persistent {
            if bitmap.inconsistent, let old = bitmapState.directory.first(where: { $0.name == bitmap.name }) {
                entries.append(old)
                kept.insert(old.name)
                continue
            }
            entries.append(try writeBitmap(bitmap))
        }
        var directoryOffset: UInt64 = 0
        let directory = entries.flatMap(\.bytes)
        if !directory.isEmpty {
            let clusters = (directory.count + clusterSize - 1) / clusterSize
            directoryOffset = try meta.allocate(clusters)
            try meta.writeBytes(directory + [UInt8](repeating: 0, count: clusters * clusterSize - directory.count), at: directoryOffset)
        }
        try meta.writeBackAll(canFree: false)
        var header = meta.header
        header.otherExtensions.removeAll { $0.type == Qcow2Header.bitmapsExtension }
        if entries.isEmpty {
            header.autoclearFeatures &= ~Qcow2Header.bitmapsAutoclearBit
        } else {
            let ext = Qcow2Bitmaps.Extension(count: UInt32(entries.count), directorySize: UInt64(directory.count), directoryOffset: directoryOffset)
            header.otherExtensions.append((Qcow2Header.bitmapsExtension, ext.bytes))
            header.autoclearFeatures |= Qcow2Header.bitmapsAutoclearBit
        }
        let bytes = header.serialized()
        guard bytes.count <= clusterSize else { throw .invalid("the header with the bitmaps extension does not fit in one cluster") }
        try meta.writeBytes(bytes, at: 0)
        try file.flush()
        meta.header = header
        // Release what the old directory used, except the tables of the bitmaps kept as they were.
        var frees: [UInt64] = []
        if let old = bitmapState.ext, old.count > 0 {
            frees += clusters(old.directoryOffset, old.directorySize)
            for entry in bitmapState.directory where !kept.contains(entry.name) {
                frees += clusters(entry.tableOffset, UInt64(entry.tableSize) * 8)
                for word in try Qcow2Bitmaps.readTable(file: file, entry: entry) where word & Qcow2Bitmaps.tableOffsetMask != 0 {
                    frees.append((word & Qcow2Bitmaps.tableOffsetMask) >> clusterBits)
                }
            }
        }
        meta.pendingFrees += frees
        bitmapState.ext = entries.isEmpty ? nil : Qcow2Bitmaps.Extension(
            count: UInt32(entries.count), directorySize: UInt64(directory.count), directoryOffset: directoryOffset)
        bitmapState.directory = entries
    }

    /// Writes one bitmap's data clusters (all-zero clusters are left out) and its table; its entry.
    private func writeBitmap(_ bitmap: DirtyBitmap) throws(BlockError) -> Qcow2Bitmaps.Entry {
        let bits = bitmap.serialized()
        let granularityBits = UInt8(bitmap.shift)
        let tableSize = Qcow2Bitmaps.tableSize(size: bitmap.size, granularityBits: granularityBits, clusterSize: clusterSize)
        var table = [UInt64](repeating: 0, count: Int(tableSize))
        for index in 0..<Int(tableSize) {
            let start = index * clusterSize
            let end = min(start + clusterSize, bits.count)
            guard start < end, bits[start..<end].contains(where: { $0 != 0 }) else { continue }
            let offset = try meta.allocate(1)
            var chunk = Array(bits[start..<end])
            chunk += [UInt8](repeating: 0, count: clusterSize - chunk.count)
            try meta.writeBytes(chunk, at: offset)
            table[index] = offset
        }
        var tableOffset: UInt64 = 0
        if tableSize > 0 {
            let bytes = Qcow2Bytes.bytes(table)
            let clusters = (bytes.count + clusterSize - 1) / clusterSize
            tableOffset = try meta.allocate(clusters)
            try meta.writeBytes(bytes + [UInt8](repeating: 0, count: clusters * clusterSize - bytes.count), at: tableOffset)
        }
        return Qcow2Bitmaps.Entry(
            tableOffset: tableOffset, tableSize: tableSize, flags: bitmap.enabled ? Qcow2Bitmaps.Entry.auto : 0,
            granularityBits: granularityBits, name: bitmap.name)
    }

    /// The cluster indexes a byte range touches.
    private func clusters(_ offset: UInt64, _ length: UInt64) -> [UInt64] {
        guard length > 0 else { return [] }
        return Array((offset >> clusterBits)...((offset + length - 1) >> clusterBits))
    }
}
