import BlockCore

/// The consistency check of a qed image (qemu-img check, and the check at open after an unclean
/// shutdown): every table and cluster offset lies in the file and is used once; with `repair`,
/// invalid entries are cleared and QED_F_NEED_CHECK is cleared when nothing else is wrong.
public enum QedCheck {
    /// Checks (and with `repair`, repairs) the qed image in `file`.
    public static func run(file: BlockNode, repair: Qcow2RepairMode?) throws(BlockError) -> Qcow2CheckReport {
        var header = try QedHeader.read(file)
        guard header.tableBytes <= QedOpener.maxTableBytes else { throw .invalid("qed: tables are too large to check") }
        if repair != nil && file.readOnly { throw .notPermitted("the image is opened read-only; it cannot be repaired") }
        let fix = repair == .all
        let clusterSize = UInt64(header.clusterSize)
        let fileSize = file.length
        let clusters = (fileSize + clusterSize - 1) / clusterSize
        var used = [UInt64](repeating: 0, count: Int((clusters + 63) / 64))
        var report = Qcow2CheckReport()
        var fixed = 0
        /// Marks clusters used; false when one of them already was.
        func mark(_ offset: UInt64, _ count: UInt64) -> Bool {
            var fresh = true
            for cluster in (offset / clusterSize)..<(offset / clusterSize + count) where cluster < clusters {
                let (word, bit) = (Int(cluster / 64), cluster % 64)
                if used[word] & (1 << bit) != 0 { fresh = false }
                used[word] |= 1 << bit
            }
            return fresh
        }
        let tableClusters = UInt64(header.tableSize)
        func validTable(_ offset: UInt64) -> Bool {
            offset % clusterSize == 0 && offset <= fileSize && UInt64(header.tableBytes) <= fileSize - offset
                && offset >= UInt64(header.headerSize) * clusterSize
        }
        _ = mark(0, UInt64(header.headerSize))
        _ = mark(header.l1TableOffset, tableClusters)
        var l1 = LittleEndian.words(try ImageBacking.readBytes(file, at: header.l1TableOffset, count: header.tableBytes, what: "the qed L1 table"))
        var l1Changed = false
        var previous: UInt64?
        for index in l1.indices where l1[index] != 0 {
            let l2Offset = l1[index]
            guard validTable(l2Offset) else {
                report.corruptions += 1
                report.messages.append("L1 entry \(index): invalid L2 table offset \(l2Offset)")
                if fix { l1[index] = 0; l1Changed = true; fixed += 1 }
                continue
            }
            if !mark(l2Offset, tableClusters) {
                report.corruptions += 1
                report.messages.append("L2 table at \(l2Offset) is referenced more than once")
                continue
            }
            var l2 = LittleEndian.words(try ImageBacking.readBytes(file, at: l2Offset, count: header.tableBytes, what: "a qed L2 table"))
            var l2Changed = false
            for slot in l2.indices where l2[slot] > QedHeader.zeroCluster {
                let offset = l2[slot]
                guard offset % clusterSize == 0, offset < fileSize, offset >= UInt64(header.headerSize) * clusterSize else {
                    report.corruptions += 1
                    report.messages.append("L2 table at \(l2Offset), entry \(slot): invalid cluster offset \(offset)")
                    if fix { l2[slot] = 0; l2Changed = true; fixed += 1 }
                    continue
                }
                if !mark(offset, 1) {
                    report.corruptions += 1
                    report.messages.append("cluster at \(offset) is referenced more than once")
                }
                report.allocatedClusters += 1
                if let previous, offset != previous + clusterSize { report.fragmentedClusters += 1 }
                previous = offset
            }
            if l2Changed {
                try write(file, LittleEndian.bytes(l2[...]), at: l2Offset)
            }
        }
        if l1Changed { try write(file, LittleEndian.bytes(l1[...]), at: header.l1TableOffset) }
        for cluster in UInt64(header.headerSize)..<max(clusters, UInt64(header.headerSize))
        where used[Int(cluster / 64)] & (1 << (cluster % 64)) == 0 {
            report.leaks += 1
        }
        report.totalClusters = (header.imageSize + clusterSize - 1) / clusterSize
        report.corruptions -= fixed
        report.corruptionsFixed = fixed
        if fix && report.corruptions == 0 && header.needsCheck {
            try file.flush()
            header.features &= ~QedHeader.needCheckFeature
            try write(file, header.serialized(), at: 0)
        }
        if repair != nil { try file.flush() }
        return report
    }

    private static func write(_ file: BlockNode, _ bytes: [UInt8], at offset: UInt64) throws(BlockError) {
        try bytes.withBytes { (raw) throws(BlockError) in try file.write(raw, at: offset, fua: false) }
    }
}
