import BlockCore

/// The checks a read-write open makes before the image may grow: every table entry that points into
/// the file must point inside it. Once blockd appends clusters, an entry that pointed past the end
/// would name new data (an L2 table "found" in a guest's data, a refcount block that counts nothing
/// real), so such an image takes no writes. Read-only opens check lazily, request by request.
enum Qcow2OpenCheck {
    /// What the check found.
    enum Outcome {
        /// The first damage found in the L1 table, the refcount table or the snapshots' tables.
        case damaged(String)
        /// No damage; the regions the snapshots own (their table and L1 tables), which writes and
        /// allocations must avoid.
        case sound(snapshotRegions: [(start: UInt64, length: UInt64)])
    }

    /// Checks the tables of an image about to be opened read-write, reading the snapshot table once.
    static func check(file: BlockNode, header: Qcow2Header, l1: [UInt64], refcountTable: [UInt64]) -> Outcome {
        if let problem = damage(file: file, header: header, l1: l1, refcountTable: refcountTable) { return .damaged(problem) }
        let snapshots: [Qcow2Snapshot]
        let tableLength: UInt64
        do throws(BlockError) {
            snapshots = try Qcow2Snapshots.list(file: file, header: header)
            tableLength = try Qcow2Snapshots.tableLength(file: file, header: header)
        } catch {
            return .damaged("the snapshot table is damaged: \(error.message)")
        }
        if let problem = snapshotDamage(file: file, header: header, snapshots: snapshots) { return .damaged(problem) }
        let regions = snapshots.isEmpty ? [] : [(header.snapshotsOffset, tableLength)] + snapshots.map { ($0.l1TableOffset, UInt64($0.l1Size) * 8) }
        return .sound(snapshotRegions: regions)
    }

    /// True when a cluster at `offset` does not lie wholly inside the file.
    private static func outside(_ offset: UInt64, file: BlockNode, header: Qcow2Header) -> Bool {
        offset > file.length || UInt64(header.clusterSize) > file.length - offset
    }

    /// The first damaged entry of an L1 table (reserved bits, an unaligned offset, an L2 table past
    /// the end of the file), or nil.
    private static func l1Damage(_ table: [UInt64], _ what: String, file: BlockNode, header: Qcow2Header) -> String? {
        let clusterMask = UInt64(header.clusterSize - 1)
        for (index, entry) in table.enumerated() where entry != 0 {
            let offset = entry & Qcow2Metadata.offsetMask
            if entry & Qcow2Metadata.l1Reserved != 0 || offset & clusterMask != 0 {
                return "\(what) entry \(index) (0x\(String(entry, radix: 16))) has reserved bits set or an unaligned offset"
            }
            if offset != 0 && outside(offset, file: file, header: header) { return "\(what) entry \(index) points past the end of the file" }
        }
        return nil
    }

    /// The first damage found in the L1 table or the refcount table, or nil.
    private static func damage(file: BlockNode, header: Qcow2Header, l1: [UInt64], refcountTable: [UInt64]) -> String? {
        if let problem = l1Damage(l1, "L1 table", file: file, header: header) { return problem }
        let clusterMask = UInt64(header.clusterSize - 1)
        for (index, entry) in refcountTable.enumerated() where entry != 0 {
            let offset = entry & ~Qcow2Metadata.refcountTableReserved
            if entry & Qcow2Metadata.refcountTableReserved != 0 || offset & clusterMask != 0 {
                return "refcount table entry \(index) (0x\(String(entry, radix: 16))) has reserved bits set or an unaligned offset"
            }
            if outside(offset, file: file, header: header) { return "refcount table entry \(index) points past the end of the file" }
        }
        return nil
    }

    /// The first damage found in the snapshots' L1 tables or in how the fixed metadata lies, or nil.
    private static func snapshotDamage(file: BlockNode, header: Qcow2Header, snapshots: [Qcow2Snapshot]) -> String? {
        for snapshot in snapshots {
            let bytes: [UInt8]
            do throws(BlockError) {
                bytes = try Qcow2Opener.readBytes(file, at: snapshot.l1TableOffset, count: Int(snapshot.l1Size) * 8)
            } catch {
                return "the L1 table of snapshot '\(snapshot.name)' is out of range"
            }
            if let problem = l1Damage(Qcow2Bytes.words(bytes), "the L1 table of snapshot '\(snapshot.name)'", file: file, header: header) {
                return problem
            }
        }
        return overlaps(header: header, snapshots: snapshots)
    }

    /// Fixed metadata that overlaps other fixed metadata (an L1 table over the refcount table, a
    /// table over the header), or nil.
    private static func overlaps(header: Qcow2Header, snapshots: [Qcow2Snapshot]) -> String? {
        let cluster = UInt64(header.clusterSize)
        var regions: [(name: String, start: UInt64, end: UInt64)] = [
            ("the header", 0, cluster),
            ("the L1 table", header.l1TableOffset, header.l1TableOffset + UInt64(header.l1Size) * 8),
            ("the refcount table", header.refcountTableOffset,
             header.refcountTableOffset + (UInt64(header.refcountTableClusters) << UInt64(header.clusterBits))),
        ]
        for snapshot in snapshots {
            regions.append(("the L1 table of snapshot '\(snapshot.name)'", snapshot.l1TableOffset,
                            snapshot.l1TableOffset + UInt64(snapshot.l1Size) * 8))
        }
        let used = regions.filter { $0.end > $0.start }
        for (index, first) in used.enumerated() {
            for second in used[(index + 1)...] where first.start < second.end && second.start < first.end {
                return "\(first.name) overlaps \(second.name)"
            }
        }
        return nil
    }
}
