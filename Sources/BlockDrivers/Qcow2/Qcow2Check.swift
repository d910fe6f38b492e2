import BlockCore

/// What `check -r` may repair.
public enum Qcow2RepairMode: String, Sendable {
    /// Leaked clusters only (refcounts higher than the references).
    case leaks
    /// Leaks and refcount errors, and the COPIED flags of the active tables.
    case all
}

/// The result of a consistency check, with the counters of QEMU's ImageCheck.
public struct Qcow2CheckReport: Sendable, Equatable {
    public var corruptions = 0
    public var leaks = 0
    public var checkErrors = 0
    public var corruptionsFixed = 0
    public var leaksFixed = 0
    public var imageEndOffset: UInt64 = 0
    public var totalClusters: UInt64 = 0
    public var allocatedClusters: UInt64 = 0
    public var fragmentedClusters: UInt64 = 0
    public var compressedClusters: UInt64 = 0
    /// One line per problem found, in the order found.
    public var messages: [String] = []

    /// A clean report with nothing counted.
    public init() {}
}

/// Recounts every reference an image makes (header, tables, snapshots, data) and compares the counts
/// with the stored refcounts; optionally rewrites the refcounts to match.
public enum Qcow2Check {
    /// Checks (and with `repair`, repairs) the qcow2 image in `file`.
    public static func run(file: BlockNode, repair: Qcow2RepairMode?) throws(BlockError) -> Qcow2CheckReport {
        var report = try examine(file: file)
        let dirty = try Qcow2Opener.readHeader(file).isDirty
        guard let repair, report.corruptions + report.leaks > 0 || dirty else { return report }
        guard !file.readOnly else { throw .notPermitted("the image is opened read-only; it cannot be repaired") }
        let before = report
        for _ in 0..<4 {
            try rewriteRefcounts(file: file, mode: repair)
            report = try examine(file: file)
            if report.corruptions + report.leaks == 0 || repair == .leaks { break }
        }
        report.leaksFixed = max(0, before.leaks - report.leaks)
        report.corruptionsFixed = max(0, before.corruptions - report.corruptions)
        return report
    }

    /// Host cluster → expected references, and the problems found on the way.
    struct Census {
        var expected: [UInt64: UInt64] = [:]
        var report = Qcow2CheckReport()
        var copiedErrors: [(l2Offset: UInt64?, index: Int, l1Index: Int)] = []
    }

    static func examine(file: BlockNode) throws(BlockError) -> Qcow2CheckReport {
        let header = try Qcow2Opener.readHeader(file)
        let meta = try metadata(file: file, header: header)
        var census = try count(meta)
        let clusterSize = UInt64(header.clusterSize)
        let fileClusters = (file.length + clusterSize - 1) / clusterSize
        // Refcounts are compared over the file; references past its end are looked at one by one (a
        // damaged entry near 2^56 must not make the check walk every cluster up to it).
        let pastEnd = census.expected.keys.filter { $0 >= fileClusters }.sorted()
        var end: UInt64 = 0
        func compare(_ cluster: UInt64) throws(BlockError) {
            let expected = census.expected[cluster] ?? 0
            let actual = try meta.refcount(cluster)
            if actual > 0 || expected > 0 { end = cluster + 1 }
            guard actual != expected else { return }
            if actual > expected {
                census.report.leaks += 1
                census.report.messages.append(expected == 0
                    ? "Leaked cluster \(cluster) refcount=\(actual) reference=\(expected)"
                    : "ERROR cluster \(cluster) refcount=\(actual) reference=\(expected) (leaked references)")
            } else {
                census.report.corruptions += 1
                census.report.messages.append("ERROR cluster \(cluster) refcount=\(actual) reference=\(expected)")
            }
        }
        for cluster in 0..<fileClusters { try compare(cluster) }
        for cluster in pastEnd { try compare(cluster) }
        for error in census.copiedErrors {
            census.report.corruptions += 1
            census.report.messages.append(error.l2Offset == nil
                ? "ERROR OFLAG_COPIED L2 table of L1 entry \(error.l1Index): flag does not match the refcount"
                : "ERROR OFLAG_COPIED data cluster: l2_entry \(error.index) of the L2 table at \(error.l2Offset!): flag does not match the refcount")
        }
        census.report.imageEndOffset = end * clusterSize
        census.report.totalClusters = (header.size + clusterSize - 1) / clusterSize
        return census.report
    }

    static func metadata(file: BlockNode, header: Qcow2Header) throws(BlockError) -> Qcow2Metadata {
        let l1 = Qcow2Bytes.words(try Qcow2Opener.readBytes(file, at: header.l1TableOffset, count: Int(header.l1Size) * 8))
        let table = Qcow2Bytes.words(try Qcow2Opener.readBytes(
            file, at: header.refcountTableOffset, count: Int(header.refcountTableClusters) * header.clusterSize))
        return Qcow2Metadata(file: file, header: header, l1: l1, refcountTable: table, l2CacheClusters: 16,
                             refcountCacheClusters: 64, overlapCheck: .none, passDiscard: false)
    }

    /// Counts every reference the image makes (read through `meta`, which nothing has changed yet).
    static func count(_ meta: Qcow2Metadata) throws(BlockError) -> Census {
        let file = meta.file
        let header = meta.header
        var census = Census()
        let clusterSize = UInt64(header.clusterSize)
        let bits = UInt64(header.clusterBits)
        func add(_ offset: UInt64, _ length: UInt64, _ what: String) {
            guard length > 0 else { return }
            if offset % clusterSize != 0 && what != "compressed data" {
                census.report.corruptions += 1
                census.report.messages.append("ERROR \(what) at \(offset) is not cluster aligned")
                return
            }
            for cluster in (offset >> bits)...((offset + length - 1) >> bits) { census.expected[cluster, default: 0] += 1 }
        }
        add(0, clusterSize, "header")
        add(header.l1TableOffset, UInt64(header.l1Size) * 8, "L1 table")
        add(header.refcountTableOffset, UInt64(header.refcountTableClusters) * clusterSize, "refcount table")
        for entry in meta.refcountTable where entry & Qcow2Metadata.offsetMask != 0 {
            add(entry & Qcow2Metadata.offsetMask, clusterSize, "refcount block")
        }
        let snapshots = try Qcow2Snapshots.list(file: file, header: header)
        if header.snapshotCount > 0 {
            add(header.snapshotsOffset, try Qcow2Snapshots.tableLength(file: file, header: header), "snapshot table")
        }
        for reference in try Qcow2Bitmaps.references(file: file, header: header) {
            add(reference.offset, reference.length, reference.what)
        }
        var tables: [(l1: UInt64, size: UInt32, active: Bool)] = [(header.l1TableOffset, header.l1Size, true)]
        for snapshot in snapshots {
            add(snapshot.l1TableOffset, UInt64(snapshot.l1Size) * 8, "snapshot L1 table")
            tables.append((snapshot.l1TableOffset, snapshot.l1Size, false))
        }
        var activeL2: [(l1Index: Int, offset: UInt64, copied: Bool)] = []
        var activeData: [(l2: UInt64, index: Int, host: UInt64, copied: Bool)] = []
        var previousHost: UInt64?
        for table in tables {
            let l1 = Qcow2Bytes.words(try Qcow2Opener.readBytes(file, at: table.l1, count: Int(table.size) * 8))
            for (l1Index, entry) in l1.enumerated() {
                let l2Offset = entry & Qcow2Metadata.offsetMask
                guard l2Offset != 0 else { continue }
                add(l2Offset, clusterSize, "L2 table")
                guard l2Offset + clusterSize <= file.length else {
                    census.report.corruptions += 1
                    census.report.messages.append("ERROR L2 table at \(l2Offset) lies past the end of the file")
                    continue
                }
                if table.active { activeL2.append((l1Index, l2Offset, entry & Qcow2Metadata.copiedFlag != 0)) }
                let l2 = Qcow2Bytes.words(try Qcow2Opener.readBytes(file, at: l2Offset, count: header.clusterSize))
                for (index, l2Entry) in l2.enumerated() where l2Entry != 0 {
                    switch meta.state(of: l2Entry) {
                    case .compressed(let descriptor):
                        let range = meta.compressedRange(descriptor)
                        add(range.lowerBound, range.upperBound - range.lowerBound, "compressed data")
                        if table.active {
                            census.report.allocatedClusters += 1
                            census.report.compressedClusters += 1
                        }
                    case .data(let host, _), .zero(.some(let host)):
                        add(host, clusterSize, "data cluster")
                        if table.active {
                            census.report.allocatedClusters += 1
                            if let previousHost, previousHost + clusterSize != host { census.report.fragmentedClusters += 1 }
                            previousHost = host
                            activeData.append((l2Offset, index, host, l2Entry & Qcow2Metadata.copiedFlag != 0))
                        }
                    default:
                        break
                    }
                }
            }
        }
        // COPIED must be set exactly when the refcount is one (active tables only).
        for l2 in activeL2 where (try meta.refcount(l2.offset >> bits) == 1) != l2.copied {
            census.copiedErrors.append((nil, 0, l2.l1Index))
        }
        for data in activeData where (try meta.refcount(data.host >> bits) == 1) != data.copied {
            census.copiedErrors.append((data.l2, data.index, 0))
        }
        return census
    }

    /// Sets every refcount to the number of references found (with `.leaks`, only lowers them),
    /// then fixes the COPIED flags and clears the dirty bit.
    static func rewriteRefcounts(file: BlockNode, mode: Qcow2RepairMode) throws(BlockError) {
        let header = try Qcow2Opener.readHeader(file)
        let meta = try metadata(file: file, header: header)
        let census = try count(meta)
        let clusterSize = UInt64(header.clusterSize)
        // Only clusters inside the file get refcounts: a reference past its end is damage that counting
        // cannot mend (it would grow the refcount table towards 2^56), so it stays reported.
        let fileClusters = (file.length + clusterSize - 1) / clusterSize
        for cluster in 0..<fileClusters {
            let expected = census.expected[cluster] ?? 0
            let actual = try meta.refcount(cluster)
            guard actual != expected, mode == .all || actual > expected else { continue }
            try meta.setRefcount(cluster, min(expected, meta.maxRefcount))
        }
        try meta.writeDirtyRefcounts()
        try file.flush()
        if mode == .all {
            try fixCopiedFlags(meta: meta)
            if header.isDirty {
                var fixed = header
                fixed.incompatibleFeatures &= ~Qcow2Header.dirtyBit
                var bytes = [UInt8](repeating: 0, count: 8)
                bytes.withUnsafeMutableBytes { Qcow2Bytes.put(fixed.incompatibleFeatures, $0, 0) }
                try meta.writeBytes(bytes, at: 72)
            }
        }
        try meta.writeBackAll(canFree: false)
    }

    /// Sets the COPIED flag of the active L1 and L2 entries exactly where the refcount is one, and
    /// writes the tables back.
    static func fixCopiedFlags(meta: Qcow2Metadata) throws(BlockError) {
        let bits = UInt64(meta.clusterBits)
        for (l1Index, entry) in meta.l1.enumerated() {
            let l2Offset = entry & Qcow2Metadata.offsetMask
            guard l2Offset != 0 else { continue }
            let owned = try meta.refcount(l2Offset >> bits) == 1
            let fixed = owned ? entry | Qcow2Metadata.copiedFlag : entry & ~Qcow2Metadata.copiedFlag
            if fixed != entry {
                meta.l1[l1Index] = fixed
                meta.l1Dirty = true
            }
            let table = try meta.table(meta.l2Cache, at: l2Offset, what: "L2 table")
            for index in 0..<meta.l2Entries {
                let l2Entry = table.word(index)
                guard l2Entry & Qcow2Metadata.compressedFlag == 0, l2Entry & Qcow2Metadata.offsetMask != 0 else { continue }
                let dataOwned = try meta.refcount((l2Entry & Qcow2Metadata.offsetMask) >> bits) == 1
                let fixedEntry = dataOwned ? l2Entry | Qcow2Metadata.copiedFlag : l2Entry & ~Qcow2Metadata.copiedFlag
                if fixedEntry != l2Entry { table.setWord(index, fixedEntry) }
            }
        }
        try meta.writeBackAll(canFree: false)
    }
}
