#if canImport(Glibc)
import Glibc
#endif
import BlockCore

/// Creates, applies and deletes internal snapshots of an image that no one else has open.
///
/// Every change follows the crash-safe order: refcount increases are stable before the tables that
/// rely on them, and decreases happen only after the tables that dropped a reference are stable.
public final class Qcow2SnapshotEditor {
    private let file: BlockNode
    private let meta: Qcow2Metadata
    private var snapshots: [Qcow2Snapshot]

    /// Opens the editor on an image file (a writable protocol node).
    public init(file: BlockNode) throws(BlockError) {
        guard !file.readOnly else { throw .notPermitted("the image is opened read-only") }
        let header = try Qcow2Opener.readHeader(file)
        guard !header.isCorrupt else { throw .io("the image is marked corrupt; repair it first") }
        self.file = file
        self.meta = try Qcow2Check.metadata(file: file, header: header)
        self.snapshots = try Qcow2Snapshots.list(file: file, header: header)
    }

    /// The snapshots as they are now.
    public var list: [Qcow2Snapshot] { snapshots }

    /// Takes a snapshot of the current contents.
    public func create(name: String) throws(BlockError) {
        guard !name.isEmpty, name.utf8.count < 65536 else { throw .invalid("a snapshot needs a name") }
        guard !snapshots.contains(where: { $0.name == name || $0.id == name }) else {
            throw .invalid("a snapshot named '\(name)' already exists")
        }
        let l1 = meta.l1
        let clusters = max(1, (l1.count * 8 + meta.clusterSize - 1) / meta.clusterSize)
        let referenced = try references(of: l1)
        guard meta.maxRefcount > 1 || referenced.isEmpty else {
            throw .notSupported("snapshots need refcounts wider than 1 bit (refcount_bits=\(meta.header.refcountBits))")
        }
        let copyOffset = try meta.allocate(clusters)
        try adjust(referenced, by: 1)
        var bytes = Qcow2Bytes.bytes(l1)
        bytes += [UInt8](repeating: 0, count: clusters * meta.clusterSize - bytes.count)
        try meta.writeBytes(bytes, at: copyOffset)
        try meta.writeBackAll(canFree: false)
        try Qcow2Check.fixCopiedFlags(meta: meta)
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let nextID = (snapshots.compactMap { Int($0.id) }.max() ?? 0) + 1
        let snapshot = Qcow2Snapshot(
            id: String(nextID), name: name, l1TableOffset: copyOffset, l1Size: UInt32(l1.count),
            dateSeconds: UInt32(truncatingIfNeeded: now.tv_sec), dateNanoseconds: UInt32(now.tv_nsec),
            vmClockNanoseconds: 0, vmStateSize: 0, diskSize: meta.header.size, icount: nil)
        try writeTable(snapshots + [snapshot])
    }

    /// Makes a snapshot's contents the current contents (what was current is lost).
    public func apply(_ nameOrID: String) throws(BlockError) {
        let snapshot = try find(nameOrID)
        let target = Qcow2Bytes.words(try Qcow2Opener.readBytes(file, at: snapshot.l1TableOffset, count: Int(snapshot.l1Size) * 8))
        guard target.count <= meta.l1.count else {
            throw .notSupported("snapshot '\(snapshot.name)' has a larger L1 table than the image; resize the image first")
        }
        let old = meta.l1
        try adjust(try references(of: target), by: 1)
        try meta.writeBackAll(canFree: false)
        meta.l1 = target + [UInt64](repeating: 0, count: old.count - target.count)
        meta.l1Dirty = true
        try meta.writeBackAll(canFree: false)
        try adjust(try references(of: old), by: -1)
        try meta.writeBackAll(canFree: false)
        try Qcow2Check.fixCopiedFlags(meta: meta)
        if let size = snapshot.diskSize, size != meta.header.size {
            meta.header.size = size
            var field = [UInt8](repeating: 0, count: 8)
            field.withUnsafeMutableBytes { Qcow2Bytes.put(size, $0, 0) }
            try meta.writeBytes(field, at: 24)
            try file.flush()
        }
    }

    /// Deletes a snapshot and releases what only it used.
    public func delete(_ nameOrID: String) throws(BlockError) {
        let snapshot = try find(nameOrID)
        let l1 = Qcow2Bytes.words(try Qcow2Opener.readBytes(file, at: snapshot.l1TableOffset, count: Int(snapshot.l1Size) * 8))
        try writeTable(snapshots.filter { $0 != snapshot })
        try adjust(try references(of: l1), by: -1)
        let first = snapshot.l1TableOffset >> UInt64(meta.clusterBits)
        let clusters = max(1, (Int(snapshot.l1Size) * 8 + meta.clusterSize - 1) / meta.clusterSize)
        try adjust((first..<(first + UInt64(clusters))).map { $0 }, by: -1)
        try meta.writeBackAll(canFree: false)
        try Qcow2Check.fixCopiedFlags(meta: meta)
    }

    private func find(_ nameOrID: String) throws(BlockError) -> Qcow2Snapshot {
        guard let snapshot = snapshots.first(where: { $0.id == nameOrID }) ?? snapshots.first(where: { $0.name == nameOrID }) else {
            throw .invalid("no snapshot named '\(nameOrID)'")
        }
        return snapshot
    }

    /// Host clusters referenced through an L1 table: its L2 tables and their data (once per reference).
    private func references(of l1: [UInt64]) throws(BlockError) -> [UInt64] {
        var clusters: [UInt64] = []
        let bits = UInt64(meta.clusterBits)
        for entry in l1 {
            let l2Offset = entry & Qcow2Metadata.offsetMask
            guard l2Offset != 0 else { continue }
            clusters.append(l2Offset >> bits)
            let table = try meta.table(meta.l2Cache, at: l2Offset, what: "L2 table")
            for index in 0..<meta.l2Entries {
                switch meta.state(of: table.word(index)) {
                case .data(let host, _), .zero(.some(let host)):
                    clusters.append(host >> bits)
                case .compressed(let descriptor):
                    let range = meta.compressedRange(descriptor)
                    clusters += ((range.lowerBound >> bits)...((range.upperBound - 1) >> bits)).map { $0 }
                default:
                    break
                }
            }
        }
        return clusters
    }

    private func adjust(_ clusters: [UInt64], by delta: Int) throws(BlockError) {
        // A reference past the end of the file is damage: counting it would grow the refcount table
        // to cover it (far offsets made that run for hours). Refuse, and leave the repair to the check.
        let end = try meta.endCluster()
        if let far = clusters.first(where: { $0 >= end }) {
            throw .invalid("qcow2: cluster \(far) is referenced past the end of the file; repair the image with 'blockimg check -r all' first")
        }
        if delta > 0 {
            // Check every count first, so an overflow changes nothing.
            var counts: [UInt64: UInt64] = [:]
            for cluster in clusters { counts[cluster, default: 0] += 1 }
            for (cluster, added) in counts where try meta.refcount(cluster) + added > meta.maxRefcount {
                throw .notSupported("refcount of cluster \(cluster) would overflow its \(meta.header.refcountBits)-bit width (snapshots need wider refcounts)")
            }
        }
        for cluster in clusters {
            let count = try meta.refcount(cluster)
            if delta < 0 && count == 0 { throw .io("qcow2: refcount of cluster \(cluster) would fall below zero") }
            try meta.setRefcount(cluster, delta < 0 ? count - 1 : count + 1)
        }
    }

    /// Writes a new snapshot table in new clusters, points the header at it and frees the old one.
    private func writeTable(_ entries: [Qcow2Snapshot]) throws(BlockError) {
        var bytes: [UInt8] = []
        for snapshot in entries {
            var entry = [UInt8](repeating: 0, count: 40 + 16)
            entry.withUnsafeMutableBytes { raw in
                Qcow2Bytes.put(snapshot.l1TableOffset, raw, 0)
                Qcow2Bytes.put(snapshot.l1Size, raw, 8)
                Qcow2Bytes.put(UInt16(snapshot.id.utf8.count), raw, 12)
                Qcow2Bytes.put(UInt16(snapshot.name.utf8.count), raw, 14)
                Qcow2Bytes.put(snapshot.dateSeconds, raw, 16)
                Qcow2Bytes.put(snapshot.dateNanoseconds, raw, 20)
                Qcow2Bytes.put(snapshot.vmClockNanoseconds, raw, 24)
                Qcow2Bytes.put(UInt32(truncatingIfNeeded: min(snapshot.vmStateSize, UInt64(UInt32.max))), raw, 32)
                Qcow2Bytes.put(UInt32(16), raw, 36)
                Qcow2Bytes.put(snapshot.vmStateSize, raw, 40)
                Qcow2Bytes.put(snapshot.diskSize ?? meta.header.size, raw, 48)
            }
            entry += Array(snapshot.id.utf8) + Array(snapshot.name.utf8)
            entry += [UInt8](repeating: 0, count: (8 - entry.count % 8) % 8)
            bytes += entry
        }
        let oldOffset = meta.header.snapshotsOffset
        let oldLength = meta.header.snapshotCount > 0 ? try Qcow2Snapshots.tableLength(file: file, header: meta.header) : 0
        var newOffset: UInt64 = 0
        if !bytes.isEmpty {
            let clusters = (bytes.count + meta.clusterSize - 1) / meta.clusterSize
            newOffset = try meta.allocate(clusters)
            try meta.writeBackAll(canFree: false)
            bytes += [UInt8](repeating: 0, count: clusters * meta.clusterSize - bytes.count)
            try meta.writeBytes(bytes, at: newOffset)
            try file.flush()
        }
        var fields = [UInt8](repeating: 0, count: 12)
        fields.withUnsafeMutableBytes { raw in
            Qcow2Bytes.put(UInt32(entries.count), raw, 0)
            Qcow2Bytes.put(newOffset, raw, 4)
        }
        try meta.writeBytes(fields, at: 60)
        try file.flush()
        meta.header.snapshotCount = UInt32(entries.count)
        meta.header.snapshotsOffset = newOffset
        if oldLength > 0 {
            let first = oldOffset >> UInt64(meta.clusterBits)
            let last = (oldOffset + oldLength - 1) >> UInt64(meta.clusterBits)
            try adjust((first...last).map { $0 }, by: -1)
            try meta.writeBackAll(canFree: false)
        }
        snapshots = entries
    }
}
