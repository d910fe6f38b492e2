import BlockCore

/// The metadata of a VHDX image as opened: the current header, the regions, the disk parameters and
/// the block allocation table, each checked as QEMU checks them.
enum VhdxImage {
    static let headerOffsets: [UInt64] = [64 << 10, 128 << 10]
    static let regionTableOffset: UInt64 = 192 << 10
    static let regionTableSize = 64 << 10
    /// Largest log read into memory to be replayed.
    static let maxLogLength: UInt32 = 256 << 20

    /// Reads the file identifier, the headers and the region table.
    static func readHeaders(_ file: BlockNode) throws(BlockError) -> (headers: [VhdxHeader?], current: Int, bat: VhdxTableEntry, metadata: VhdxTableEntry) {
        guard file.length >= 1 << 20 else { throw .invalid("Not a VHDX image: the file is too short (\(file.length) bytes)") }
        let identifier = try Qcow2Opener.readBytes(file, at: 0, count: 8)
        guard identifier == Array("vhdxfile".utf8) else { throw .invalid("Not a VHDX image: no 'vhdxfile' file identifier") }
        let headers = [
            VhdxHeader.parse(try Qcow2Opener.readBytes(file, at: headerOffsets[0], count: VhdxHeader.size)).flatMap { $0.version == 1 ? $0 : nil },
            VhdxHeader.parse(try Qcow2Opener.readBytes(file, at: headerOffsets[1], count: VhdxHeader.size)).flatMap { $0.version == 1 ? $0 : nil },
        ]
        let current: Int
        switch (headers[0], headers[1]) {
        case (nil, nil):
            throw .invalid("No valid VHDX header found")
        case (.some, nil): current = 0
        case (nil, .some): current = 1
        case (let first?, let second?):
            if first.sequence == second.sequence && first.bytes() != second.bytes() { throw .invalid("No valid VHDX header found") }
            current = second.sequence > first.sequence ? 1 : 0
        }
        let table = try Qcow2Opener.readBytes(file, at: regionTableOffset, count: regionTableSize)
        guard VhdxBytes.u32(table, 0) == 0x6967_6572, VhdxBytes.sealed(table, checksumAt: 4) else {
            throw .invalid("VHDX region table is invalid (bad signature or checksum)")
        }
        let count = Int(VhdxBytes.u32(table, 8))
        guard count <= 2047 else { throw .invalid("VHDX region table has too many entries (\(count))") }
        var bat: VhdxTableEntry?
        var metadata: VhdxTableEntry?
        for index in 0..<count {
            let at = 16 + index * 32
            let entry = VhdxTableEntry(guid: VhdxGUID(bytes: Array(table[at..<at + 16])), offset: VhdxBytes.u64(table, at + 16),
                                       length: VhdxBytes.u32(table, at + 24), flags: VhdxBytes.u32(table, at + 28))
            guard entry.offset % (1 << 20) == 0, entry.offset >= 1 << 20, entry.offset <= file.length,
                  UInt64(entry.length) <= file.length - entry.offset else {
                throw .invalid("VHDX region at \(entry.offset) (\(entry.length) bytes) lies outside the file")
            }
            if entry.guid == .bat {
                bat = entry
            } else if entry.guid == .metadata {
                metadata = entry
            } else if entry.flags & 1 != 0 {
                throw .notSupported("VHDX image has a required region this driver does not know")
            }
        }
        guard let bat, let metadata else { throw .invalid("VHDX image lacks its BAT or metadata region") }
        if let other = [bat, metadata].first(where: { $0.offset < 1 << 20 }) { throw .invalid("VHDX region at \(other.offset) overlaps the headers") }
        if bat.offset < metadata.offset + UInt64(metadata.length) && metadata.offset < bat.offset + UInt64(bat.length) {
            throw .invalid("VHDX BAT and metadata regions overlap")
        }
        return (headers, current, bat, metadata)
    }

    /// Reads the metadata region's table and the items the disk needs.
    static func readParameters(_ file: BlockNode, region: VhdxTableEntry) throws(BlockError) -> VhdxParameters {
        guard region.length >= 64 << 10 else { throw .invalid("VHDX metadata region is too small") }
        let table = try Qcow2Opener.readBytes(file, at: region.offset, count: 64 << 10)
        guard table[0..<8].elementsEqual("metadata".utf8) else { throw .invalid("VHDX metadata table has a bad signature") }
        let count = Int(VhdxBytes.u16(table, 10))
        guard count <= 2047 else { throw .invalid("VHDX metadata table has too many entries (\(count))") }
        var items: [VhdxGUID: [UInt8]] = [:]
        let known: Set<VhdxGUID> = [.fileParameters, .virtualDiskSize, .page83, .logicalSectorSize, .physicalSectorSize, .parentLocator]
        for index in 0..<count {
            let at = 32 + index * 32
            let guid = VhdxGUID(bytes: Array(table[at..<at + 16]))
            let offset = UInt64(VhdxBytes.u32(table, at + 16))
            let length = UInt64(VhdxBytes.u32(table, at + 20))
            let flags = VhdxBytes.u32(table, at + 24)
            guard known.contains(guid) else {
                if flags & 4 != 0 { throw .notSupported("VHDX image has a required metadata item this driver does not know") }
                continue
            }
            guard length <= 1 << 20, offset + length <= UInt64(region.length), length == 0 || offset >= 64 << 10 else {
                throw .invalid("VHDX metadata item at \(offset) (\(length) bytes) lies outside its region")
            }
            items[guid] = try Qcow2Opener.readBytes(file, at: region.offset + offset, count: Int(length))
        }
        func item(_ guid: VhdxGUID, _ size: Int, _ name: String) throws(BlockError) -> [UInt8] {
            guard let bytes = items[guid], bytes.count >= size else { throw .invalid("VHDX metadata lacks the \(name)") }
            return bytes
        }
        let fileParameters = try item(.fileParameters, 8, "file parameters")
        let parameters = VhdxParameters(
            blockSize: VhdxBytes.u32(fileParameters, 0), leaveBlocksAllocated: VhdxBytes.u32(fileParameters, 4) & 1 != 0,
            hasParent: VhdxBytes.u32(fileParameters, 4) & 2 != 0,
            virtualSize: VhdxBytes.u64(try item(.virtualDiskSize, 8, "virtual disk size"), 0),
            logicalSectorSize: VhdxBytes.u32(try item(.logicalSectorSize, 4, "logical sector size"), 0),
            physicalSectorSize: VhdxBytes.u32(try item(.physicalSectorSize, 4, "physical sector size"), 0),
            page83: try item(.page83, 16, "page 83 data"))
        let blockSize = parameters.blockSize
        guard blockSize >= 1 << 20, blockSize <= 256 << 20, blockSize & (blockSize - 1) == 0 else {
            throw .invalid("VHDX block size \(blockSize) is invalid (a power of two from 1 MiB to 256 MiB)")
        }
        guard parameters.logicalSectorSize == 512 || parameters.logicalSectorSize == 4096 else {
            throw .invalid("VHDX logical sector size \(parameters.logicalSectorSize) is invalid (512 or 4096)")
        }
        guard parameters.virtualSize <= 64 << 40, parameters.virtualSize % UInt64(parameters.logicalSectorSize) == 0 else {
            throw .invalid("VHDX virtual disk size \(parameters.virtualSize) is invalid")
        }
        if parameters.hasParent {
            throw .notSupported("VHDX differencing images (with a parent) are not supported")
        }
        return parameters
    }

    /// Reads the BAT: one entry per payload block and per chunk's sector bitmap.
    static func readBAT(_ file: BlockNode, region: VhdxTableEntry, parameters: VhdxParameters) throws(BlockError) -> [UInt64] {
        let entries = parameters.batEntries
        guard entries * 8 <= UInt64(region.length) else {
            throw .invalid("VHDX BAT region (\(region.length) bytes) is too small for \(entries) entries")
        }
        let raw = try Qcow2Opener.readBytes(file, at: region.offset, count: Int(entries) * 8)
        return raw.withUnsafeBytes { bytes in (0..<Int(entries)).map { UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: $0 * 8, as: UInt64.self)) } }
    }

    /// The payload entries that point past the end of the file, as qemu-img check words them.
    static func batProblems(_ bat: [UInt64], parameters: VhdxParameters, fileLength: UInt64) -> [String] {
        var problems: [String] = []
        for block in 0..<parameters.dataBlocks {
            let index = parameters.batIndex(ofBlock: block)
            let entry = bat[Int(index)]
            let state = entry & 7
            guard state == VhdxBlockState.fullyPresent || state == VhdxBlockState.partiallyPresent else { continue }
            let offset = entry & VhdxBlockState.offsetMask
            if offset + UInt64(parameters.blockSize) > fileLength {
                problems.append("VHDX BAT entry \(index) start offset \(offset) points after end of file (\(fileLength)). Image has probably been truncated.")
            }
        }
        return problems
    }

    /// The log of the current header, when it names one with entries to replay; the message QEMU
    /// gives for a bad log otherwise.
    static func pendingLog(_ file: BlockNode, header: VhdxHeader) throws(BlockError) -> [VhdxLog.Entry] {
        guard !header.logGUID.isZero, header.logLength > 0 else { return [] }
        guard header.logVersion == 0 else { throw .invalid("VHDX log version \(header.logVersion) is not supported") }
        guard header.logLength % (1 << 20) == 0, header.logOffset % (1 << 20) == 0, header.logOffset >= 1 << 20 else {
            throw .invalid("VHDX log at \(header.logOffset) (\(header.logLength) bytes) is not aligned to 1 MiB")
        }
        guard header.logLength <= maxLogLength else { throw .invalid("VHDX log of \(header.logLength) bytes is too large to replay") }
        let bytes = try Qcow2Opener.readBytes(file, at: header.logOffset, count: Int(header.logLength))
        return VhdxLog(bytes: bytes, guid: header.logGUID).activeSequence()
    }

    /// Writes a new current header into the other slot: sequence one higher, this session's file
    /// write GUID, the log GUID cleared (QEMU's header update).
    static func updateHeader(_ file: BlockNode, headers: inout [VhdxHeader?], current: inout Int, session: VhdxGUID,
                             newDataGUID: Bool) throws(BlockError) {
        var next = headers[current]!
        next.sequence += 1
        next.fileWriteGUID = session
        if newDataGUID { next.dataWriteGUID = .random() }
        next.logGUID = VhdxGUID(bytes: [UInt8](repeating: 0, count: 16))
        let slot = current ^ 1
        try next.bytes().withBytes { (raw) throws(BlockError) in try file.write(raw, at: headerOffsets[slot], fua: false) }
        try file.flush()
        headers[slot] = next
        current = slot
    }
}
