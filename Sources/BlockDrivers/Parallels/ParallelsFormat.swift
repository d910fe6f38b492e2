import BlockCore

/// parallels as probing, `blockimg create`, `info` and `check` see it.
public enum ParallelsFormat {
    /// The registry entry.
    public static let format = ImageFormat(
        name: "parallels", probe: probe, createOptions: ["cluster_size", "preallocation"], create: create,
        details: { _ in
            var details = ImageDetails()
            details.showsDirtyFlag = false
            return details
        },
        check: { file, repair throws(BlockError) in try check(file: file, repair: repair) })

    /// QEMU's parallels probe: either magic and version 2 score 100.
    static func probe(_ header: [UInt8], _ filename: String) -> Int {
        guard header.count >= ParallelsHeader.length else { return 0 }
        let magic = Array(header[0..<16])
        guard magic == ParallelsHeader.oldMagic || magic == ParallelsHeader.extMagic else { return 0 }
        return header[16..<20].elementsEqual([2, 0, 0, 0]) ? 100 : 0
    }

    /// Writes a new image as QEMU lays it out: the header and BAT padded to a whole cluster, no data.
    static func create(_ path: String, _ size: UInt64, _ options: [String: String]) throws(BlockError) -> String {
        let clusterSize = try QedFormat.sizeOption(options, "cluster_size") ?? (1 << 20)
        var words = ["size=\(size)", "cluster_size=\(clusterSize)"]
        if let mode = options["preallocation"] {
            guard ["off", "falloc", "full"].contains(mode) else { throw .invalid("Unsupported preallocation mode: \(mode)") }
            words.append("preallocation=\(mode)")
        }
        let tracks = (clusterSize + 511) / 512
        guard tracks > 0, tracks <= UInt64(Int32.max) / 513 else { throw .invalid("Cluster size is too large") }
        var header = ParallelsHeader()
        header.tracks = UInt32(tracks)
        let cluster = tracks * 512
        let entries = (size + cluster - 1) / cluster
        guard entries <= UInt64(Int32.max) / 4, size / 512 <= UInt64(UInt32.max) * 512 else {
            throw .invalid("Image size is too large for this cluster size")
        }
        header.batEntries = UInt32(entries)
        header.sectors = size / 512
        header.cylinders = UInt32((size / 512 + 16 * 32 - 1) / (16 * 32))
        let dataStart = (UInt64(ParallelsHeader.length) + entries * 4 + cluster - 1) / cluster * cluster
        header.dataOffset = UInt32(dataStart / 512)
        try QedFormat.writeNewFile(path, header.serialized(), length: dataStart)
        return words.joined(separator: " ")
    }

    /// qemu-img check of a parallels image: the clean-close mark, BAT entries inside the file, and
    /// space leaked past the last cluster; `.all` repairs the first two, `.leaks` and `.all` the last.
    public static func check(file: BlockNode, repair: Qcow2RepairMode?) throws(BlockError) -> Qcow2CheckReport {
        var header = try ParallelsHeader.read(file)
        var bat = try header.readBAT(file)
        if repair != nil && file.readOnly { throw .notPermitted("the image is opened read-only; it cannot be repaired") }
        let fixErrors = repair == .all
        let fileSize = file.length
        let cluster = header.clusterSize
        var report = Qcow2CheckReport()
        var fixed = 0
        var headerChanged = false
        if header.inUse == ParallelsHeader.inUseMagic {
            report.corruptions += 1
            report.messages.append("image was not closed correctly")
            if fixErrors { header.inUse = 0; headerChanged = true; fixed += 1 }
        }
        var batChanged = false
        // As QEMU 7.2 counts: the end is one cluster past the highest one in use (the first cluster
        // when none is), and fragmentation is not counted.
        var highest: UInt64 = 0
        for index in bat.indices where bat[index] != 0 {
            let offset = UInt64(bat[index]) * header.entryUnit * 512
            if offset > fileSize {
                report.corruptions += 1
                report.messages.append("cluster \(index) is outside image")
                // Counted as in use unless cleared, as QEMU counts it.
                if fixErrors {
                    bat[index] = 0
                    batChanged = true
                    fixed += 1
                    continue
                }
            }
            report.allocatedClusters += 1
            highest = max(highest, offset)
        }
        if batChanged {
            var bytes = [UInt8](repeating: 0, count: bat.count * 4)
            bytes.withUnsafeMutableBytes { raw in for (index, entry) in bat.enumerated() { LittleEndian.put(entry, raw, index * 4) } }
            try bytes.withBytes { (raw) throws(BlockError) in try file.write(raw, at: UInt64(ParallelsHeader.length), fua: false) }
        }
        if headerChanged {
            try header.serialized().withBytes { (raw) throws(BlockError) in try file.write(raw, at: 0, fua: false) }
        }
        report.imageEndOffset = highest + cluster
        if fileSize > report.imageEndOffset {
            let leaks = Int((fileSize - report.imageEndOffset + cluster - 1) / cluster)
            report.leaks += leaks
            report.messages.append("space leaked at the end of the image: \(fileSize - report.imageEndOffset) bytes")
            if repair != nil {
                // Never into the header and BAT, which QEMU's count can reach in an empty image.
                try file.resize(to: max(report.imageEndOffset, header.dataStart))
                report.leaks -= leaks
                report.leaksFixed = leaks
            }
        }
        report.totalClusters = UInt64(header.batEntries)
        report.corruptions -= fixed
        report.corruptionsFixed = fixed
        if repair != nil { try file.flush() }
        return report
    }
}
