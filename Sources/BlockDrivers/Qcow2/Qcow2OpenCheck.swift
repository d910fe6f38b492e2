import BlockCore

/// The checks a read-write open makes before the image may grow: every table entry that points into
/// the file must point inside it. Once blockd appends clusters, an entry that pointed past the end
/// would name new data (an L2 table "found" in a guest's data, a refcount block that counts nothing
/// real), so such an image takes no writes. Read-only opens check lazily, request by request.
enum Qcow2OpenCheck {
    /// The first damage found in the L1 table, the refcount table or the snapshots' L1 tables, or nil.
    static func damage(file: BlockNode, header: Qcow2Header, l1: [UInt64], refcountTable: [UInt64]) -> String? {
        let length = file.length
        let clusterMask = UInt64(header.clusterSize - 1)
        func outside(_ offset: UInt64) -> Bool { offset > length || UInt64(header.clusterSize) > length - offset }
        func l1Damage(_ table: [UInt64], _ what: String) -> String? {
            for (index, entry) in table.enumerated() where entry != 0 {
                let offset = entry & Qcow2Metadata.offsetMask
                if entry & Qcow2Metadata.l1Reserved != 0 || offset & clusterMask != 0 {
                    return "\(what) entry \(index) (0x\(String(entry, radix: 16))) has reserved bits set or an unaligned offset"
                }
                if offset != 0 && outside(offset) { return "\(what) entry \(index) points past the end of the file" }
            }
            return nil
        }
        if let problem = l1Damage(l1, "L1 table") { return problem }
        for (index, entry) in refcountTable.enumerated() where entry != 0 {
            let offset = entry & ~Qcow2Metadata.refcountTableReserved
            if entry & Qcow2Metadata.refcountTableReserved != 0 || offset & clusterMask != 0 {
                return "refcount table entry \(index) (0x\(String(entry, radix: 16))) has reserved bits set or an unaligned offset"
            }
            if outside(offset) { return "refcount table entry \(index) points past the end of the file" }
        }
        let snapshots: [Qcow2Snapshot]
        do throws(BlockError) {
            snapshots = try Qcow2Snapshots.list(file: file, header: header)
        } catch {
            return "the snapshot table is damaged: \(error.message)"
        }
        for snapshot in snapshots {
            let bytes: [UInt8]
            do throws(BlockError) {
                bytes = try Qcow2Opener.readBytes(file, at: snapshot.l1TableOffset, count: Int(snapshot.l1Size) * 8)
            } catch {
                return "the L1 table of snapshot '\(snapshot.name)' is out of range"
            }
            if let problem = l1Damage(Qcow2Bytes.words(bytes), "the L1 table of snapshot '\(snapshot.name)'") { return problem }
        }
        return overlaps(header: header, snapshots: snapshots)
    }

    /// The regions the snapshots own (their table and L1 tables), which writes and allocations must avoid.
    static func snapshotRegions(file: BlockNode, header: Qcow2Header) -> [(start: UInt64, length: UInt64)] {
        guard header.snapshotCount > 0, let snapshots = try? Qcow2Snapshots.list(file: file, header: header),
              let tableLength = try? Qcow2Snapshots.tableLength(file: file, header: header) else { return [] }
        return [(header.snapshotsOffset, tableLength)] + snapshots.map { ($0.l1TableOffset, UInt64($0.l1Size) * 8) }
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
