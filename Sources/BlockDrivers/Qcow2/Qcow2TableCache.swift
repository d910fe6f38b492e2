import BlockCore

/// One cached metadata cluster (an L2 table or a refcount block).
final class Qcow2CachedTable {
    var bytes: [UInt8]
    var dirty = false
    var lastUse: UInt64 = 0

    init(bytes: [UInt8]) { self.bytes = bytes }

    @inline(__always)
    func word(_ index: Int) -> UInt64 {
        bytes.withUnsafeBytes { Qcow2Bytes.u64($0, index * 8) }
    }

    @inline(__always)
    func setWord(_ index: Int, _ value: UInt64) {
        bytes.withUnsafeMutableBytes { Qcow2Bytes.put(value, $0, index * 8) }
        dirty = true
    }
}

/// A least-recently-used cache of metadata clusters keyed by their offset in the image file.
/// Not thread-safe: the driver's metadata lock guards it.
final class Qcow2TableCache {
    private var tables: [UInt64: Qcow2CachedTable] = [:]
    private var clock: UInt64 = 0
    /// Most clusters held.
    var capacity: Int
    let clusterSize: Int

    init(capacity: Int, clusterSize: Int) {
        self.capacity = max(capacity, 4)
        self.clusterSize = clusterSize
    }

    /// The cached cluster at `offset`, if present.
    @inline(__always)
    func cached(_ offset: UInt64) -> Qcow2CachedTable? {
        guard let table = tables[offset] else { return nil }
        clock &+= 1
        table.lastUse = clock
        return table
    }

    /// Adds a cluster; returns the least recently used one it pushed out, which the caller writes back when dirty.
    func insert(_ offset: UInt64, _ table: Qcow2CachedTable) -> (offset: UInt64, table: Qcow2CachedTable)? {
        clock &+= 1
        table.lastUse = clock
        tables[offset] = table
        guard tables.count > capacity else { return nil }
        var victim: (UInt64, Qcow2CachedTable)?
        for (key, value) in tables where key != offset && (victim == nil || value.lastUse < victim!.1.lastUse) {
            victim = (key, value)
        }
        guard let victim else { return nil }
        tables.removeValue(forKey: victim.0)
        return victim
    }

    /// Forgets a cluster (freed, or rewritten elsewhere).
    func remove(_ offset: UInt64) { tables.removeValue(forKey: offset) }

    /// True when some cached cluster is not yet written back (no sorting, no copy).
    var hasDirty: Bool { tables.values.contains { $0.dirty } }

    /// The dirty clusters, in file order.
    var dirtyTables: [(offset: UInt64, table: Qcow2CachedTable)] {
        tables.filter { $0.value.dirty }.map { ($0.key, $0.value) }.sorted { $0.0 < $1.0 }
    }

    /// True when `offset` is a cached cluster (for the cached overlap check).
    func contains(_ offset: UInt64) -> Bool { tables[offset] != nil }

    /// Drops clean clusters not used for a while (`cache-clean-interval`).
    func dropClean() { tables = tables.filter { $0.value.dirty } }
}
