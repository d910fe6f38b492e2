import BlockCore

/// The `vhdx` format for probing, `blockimg create`, `info` and `check`.
public enum VhdxFormat {
    /// The registry entry.
    public static let format = ImageFormat(
        name: "vhdx", probe: probe,
        createOptions: ["log_size", "block_size", "subformat", "block_state_zero", "preallocation", "nocow", "extent_size_hint"],
        create: create, details: details, check: check)

    /// 100 for a file that starts with the `vhdxfile` identifier, as QEMU probes.
    static func probe(_ header: [UInt8], _ filename: String) -> Int {
        header.count >= 8 && Array(header[0..<8]) == Array("vhdxfile".utf8) ? 100 : 0
    }

    /// `cluster-size`: the block size.
    static func details(_ node: BlockNode) -> ImageDetails {
        var details = ImageDetails()
        if let driver = node.driver as? VhdxDriver { details.clusterSize = driver.blockSize }
        return details
    }

    /// qemu-img's check of a VHDX image: a pending log is replayed with `-r` (counted as a fixed
    /// corruption) and refused without; BAT entries past the end of the file are corruptions.
    static func check(_ file: BlockNode, _ repair: Qcow2RepairMode?) throws(BlockError) -> Qcow2CheckReport {
        var report = Qcow2CheckReport()
        let layout = try VhdxImage.readHeaders(file)
        let pending = try VhdxImage.pendingLog(file, header: layout.headers[layout.current]!)
        if !pending.isEmpty {
            guard repair != nil else {
                let name = file.driver.filename
                throw .notPermitted("VHDX image file '\(name)' opened read-only, but contains a log that needs to be replayed\n"
                    + "To replay the log, run:\nqemu-img check -r all '\(name)'")
            }
            _ = try VhdxDriver.open(file, readOnly: false)
            report.corruptionsFixed = 1
        }
        let parameters = try VhdxImage.readParameters(file, region: layout.metadata)
        let bat = try VhdxImage.readBAT(file, region: layout.bat, parameters: parameters)
        let problems = VhdxImage.batProblems(bat, parameters: parameters, fileLength: file.length)
        report.messages += problems
        report.corruptions += problems.count
        return report
    }

    /// Creates a VHDX image as `qemu-img create -f vhdx` lays it out: headers, region tables, the
    /// log, BAT and metadata regions, data from 5 MiB past the BAT.
    static func create(_ path: String, _ size: UInt64, _ options: [String: String]) throws(BlockError) -> String {
        let logSize = try FormatOptions.size(options, "log_size") ?? (1 << 20)
        let requestedBlock = try FormatOptions.size(options, "block_size") ?? 0
        var words = "size=\(size) log_size=\(logSize) block_size=\(requestedBlock)"
        let subformat = options["subformat"]
        if let subformat {
            guard ["dynamic", "fixed"].contains(subformat) else {
                throw .invalid("Parameter 'subformat' does not accept value '\(subformat)'")
            }
            words += " subformat=\(subformat)"
        }
        let zeroState = try FormatOptions.bool(options, "block_state_zero")
        if let zeroState { words += " block_state_zero=\(zeroState ? "on" : "off")" }
        words += try FormatOptions.protocolWords(options)
        let fixed = subformat == "fixed"
        guard size <= 64 << 40 else { throw .invalid("Image size too large; max of 64TB") }
        guard logSize % (1 << 20) == 0, logSize <= UInt64(UInt32.max) else { throw .invalid("Log size must be a multiple of 1 MB") }
        var blockSize = requestedBlock
        if blockSize == 0 {
            blockSize = size > 32 << 40 ? 64 << 20 : size > 100 << 30 ? 32 << 20 : size > 1 << 30 ? 16 << 20 : 8 << 20
        }
        guard blockSize % (1 << 20) == 0 else { throw .invalid("Block size must be a multiple of 1 MB") }
        guard blockSize & (blockSize - 1) == 0 else { throw .invalid("Block size must be a power of two") }
        guard blockSize <= 256 << 20 else { throw .invalid("Block size must not exceed 256 MB") }
        let parameters = VhdxParameters(
            blockSize: UInt32(blockSize), leaveBlocksAllocated: fixed, hasParent: false, virtualSize: size,
            logicalSectorSize: 512, physicalSectorSize: 512, page83: VhdxGUID.random().bytes)
        let mib: UInt64 = 1 << 20
        let batOffset = (mib + logSize + mib - 1) / mib * mib
        let batLength = (parameters.batEntries * 8 + mib - 1) / mib * mib
        let metadataOffset = batOffset + batLength
        let dataOffset = batOffset + batLength + 5 * mib
        var pieces: [(offset: UInt64, bytes: [UInt8])] = []
        // File identifier.
        var identifier = Array("vhdxfile".utf8)
        for unit in "blockd".utf16 { identifier += [UInt8(unit & 0xff), UInt8(unit >> 8)] }
        pieces.append((0, identifier))
        // Headers: sequence n and n + 1.
        var header = VhdxHeader(
            sequence: UInt64(UInt32.random(in: 0...UInt32.max)), fileWriteGUID: .random(), dataWriteGUID: .random(),
            logGUID: VhdxGUID(bytes: [UInt8](repeating: 0, count: 16)), logVersion: 0, version: 1,
            logLength: UInt32(logSize), logOffset: mib)
        pieces.append((VhdxImage.headerOffsets[0], header.bytes()))
        header.sequence += 1
        pieces.append((VhdxImage.headerOffsets[1], header.bytes()))
        // Region tables.
        var table = [UInt8](repeating: 0, count: VhdxImage.regionTableSize)
        VhdxBytes.put(UInt32(0x6967_6572), &table, 0)
        VhdxBytes.put(UInt32(2), &table, 8)
        for (index, region) in [(VhdxGUID.bat, batOffset, batLength), (VhdxGUID.metadata, metadataOffset, mib)].enumerated() {
            let at = 16 + index * 32
            table.replaceSubrange(at..<at + 16, with: region.0.bytes)
            VhdxBytes.put(region.1, &table, at + 16)
            VhdxBytes.put(UInt32(region.2), &table, at + 24)
        }
        VhdxBytes.seal(&table, checksumAt: 4)
        pieces.append((VhdxImage.regionTableOffset, table))
        pieces.append((VhdxImage.regionTableOffset + UInt64(VhdxImage.regionTableSize), table))
        // BAT: zero state unless block_state_zero=off; fixed images have every block present.
        let state = zeroState != false ? VhdxBlockState.zero : fixed ? VhdxBlockState.fullyPresent : VhdxBlockState.notPresent
        if state != VhdxBlockState.notPresent {
            var bat = [UInt8](repeating: 0, count: Int(parameters.batEntries * 8))
            for block in 0..<parameters.dataBlocks {
                let offset = state == VhdxBlockState.fullyPresent ? (dataOffset + block * blockSize + mib - 1) / mib * mib : 0
                VhdxBytes.put(offset | state, &bat, Int(parameters.batIndex(ofBlock: block)) * 8)
            }
            pieces.append((batOffset, bat))
        }
        // Metadata table and items.
        var metadata = [UInt8](repeating: 0, count: 64 << 10)
        metadata.replaceSubrange(0..<8, with: Array("metadata".utf8))
        VhdxBytes.put(UInt16(5), &metadata, 10)
        let items: [(VhdxGUID, UInt32, UInt32)] = [
            (.fileParameters, 8, 4), (.virtualDiskSize, 8, 6), (.page83, 16, 6), (.logicalSectorSize, 4, 6), (.physicalSectorSize, 4, 6),
        ]
        var itemOffset: UInt32 = 64 << 10
        for (index, item) in items.enumerated() {
            let at = 32 + index * 32
            metadata.replaceSubrange(at..<at + 16, with: item.0.bytes)
            VhdxBytes.put(itemOffset, &metadata, at + 16)
            VhdxBytes.put(item.1, &metadata, at + 20)
            VhdxBytes.put(item.2, &metadata, at + 24)
            itemOffset += item.1
        }
        var values = [UInt8](repeating: 0, count: 40)
        VhdxBytes.put(UInt32(blockSize), &values, 0)
        VhdxBytes.put(UInt32(fixed ? 1 : 0), &values, 4)
        VhdxBytes.put(size, &values, 8)
        values.replaceSubrange(16..<32, with: parameters.page83)
        VhdxBytes.put(UInt32(512), &values, 32)
        VhdxBytes.put(UInt32(512), &values, 36)
        pieces.append((metadataOffset, metadata))
        pieces.append((metadataOffset + (64 << 10), values))
        try FormatOptions.writeNewFile(path, pieces, length: fixed ? dataOffset + size : dataOffset)
        return words
    }
}
