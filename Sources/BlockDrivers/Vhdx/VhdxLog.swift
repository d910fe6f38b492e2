import BlockCore

/// The VHDX metadata log: a circular buffer of 4 KiB sectors holding entries (a header, descriptors,
/// then data sectors) that a writer made durable before changing metadata in place. An image whose
/// header names a log and whose log holds a valid sequence of entries is replayed before use.
struct VhdxLog {
    static let sectorSize = 4096
    static let entrySignature: UInt32 = 0x6567_6f6c  // "loge"
    static let dataDescriptorSignature: UInt32 = 0x6373_6564  // "desc"
    static let zeroDescriptorSignature: UInt32 = 0x6f72_657a  // "zero"
    static let dataSectorSignature: UInt32 = 0x6174_6164  // "data"

    /// One change an entry makes: a 4 KiB sector of data, or a run of zeroes, at a file offset.
    enum Change: Equatable {
        case data(offset: UInt64, sector: [UInt8])
        case zero(offset: UInt64, length: UInt64)
    }

    /// A valid log entry.
    struct Entry {
        var position: UInt64
        var length: UInt64
        var sequence: UInt64
        var lastFileOffset: UInt64
        var changes: [Change]
    }

    let bytes: [UInt8]
    let guid: VhdxGUID

    /// The bytes of the log region, and the log GUID of the header that names it.
    init(bytes: [UInt8], guid: VhdxGUID) {
        self.bytes = bytes
        self.guid = guid
    }

    /// `count` bytes of the log from `position`, wrapping at its end.
    func read(_ position: UInt64, _ count: Int) -> [UInt8] {
        let start = Int(position % UInt64(bytes.count))
        if start + count <= bytes.count { return Array(bytes[start..<start + count]) }
        var out = Array(bytes[start...])
        while out.count < count { out += bytes[0..<min(bytes.count, count - out.count)] }
        return out
    }

    /// The entry at `position` when it is valid (signature, GUID, lengths, descriptors, data sectors,
    /// checksum); `previous` is the sequence number the entry must follow, or nil.
    func entry(at position: UInt64, after previous: UInt64?) -> Entry? {
        let header = read(position, 64)
        guard VhdxBytes.u32(header, 0) == VhdxLog.entrySignature else { return nil }
        let length = UInt64(VhdxBytes.u32(header, 8))
        let sequence = VhdxBytes.u64(header, 16)
        let descriptors = UInt64(VhdxBytes.u32(header, 24))
        guard length > 0, length % UInt64(VhdxLog.sectorSize) == 0, length <= UInt64(bytes.count), sequence != 0,
              VhdxGUID(bytes: Array(header[32..<48])) == guid, descriptors * 32 <= length else { return nil }
        if let previous, sequence != previous + 1 { return nil }
        let entry = read(position, Int(length))
        guard VhdxBytes.sealed(entry, checksumAt: 4) else { return nil }
        let descriptorSectors = (64 + descriptors * 32 + UInt64(VhdxLog.sectorSize) - 1) / UInt64(VhdxLog.sectorSize)
        var dataSector = Int(descriptorSectors) * VhdxLog.sectorSize
        var changes: [Change] = []
        for index in 0..<Int(descriptors) {
            let at = 64 + index * 32
            let signature = VhdxBytes.u32(entry, at)
            let fileOffset = VhdxBytes.u64(entry, at + 16)
            guard VhdxBytes.u64(entry, at + 24) == sequence, fileOffset % UInt64(VhdxLog.sectorSize) == 0 else { return nil }
            if signature == VhdxLog.zeroDescriptorSignature {
                let zeroLength = VhdxBytes.u64(entry, at + 8)
                guard zeroLength % UInt64(VhdxLog.sectorSize) == 0 else { return nil }
                changes.append(.zero(offset: fileOffset, length: zeroLength))
            } else if signature == VhdxLog.dataDescriptorSignature {
                guard dataSector + VhdxLog.sectorSize <= entry.count else { return nil }
                let sector = Array(entry[dataSector..<dataSector + VhdxLog.sectorSize])
                guard VhdxBytes.u32(sector, 0) == VhdxLog.dataSectorSignature,
                      UInt64(VhdxBytes.u32(sector, 4)) == sequence >> 32,
                      UInt64(VhdxBytes.u32(sector, 4092)) == sequence & 0xffff_ffff else { return nil }
                // The sector as it goes to disk: leading 8 and trailing 4 bytes from the descriptor.
                var data = sector
                data.replaceSubrange(0..<8, with: Array(entry[(at + 8)..<(at + 16)]))
                data.replaceSubrange(4092..<4096, with: Array(entry[(at + 4)..<(at + 8)]))
                changes.append(.data(offset: fileOffset, sector: data))
                dataSector += VhdxLog.sectorSize
            } else {
                return nil
            }
        }
        return Entry(position: position, length: length, sequence: sequence, lastFileOffset: VhdxBytes.u64(header, 56), changes: changes)
    }

    /// The entries to replay: the run of consecutive valid entries with the highest sequence number,
    /// in order (empty when the log holds none).
    func activeSequence() -> [Entry] {
        var best: [Entry] = []
        var position: UInt64 = 0
        let size = UInt64(bytes.count)
        while position < size {
            guard let first = entry(at: position, after: nil) else {
                position += UInt64(VhdxLog.sectorSize)
                continue
            }
            var run = [first]
            var next = (first.position + first.length) % size
            while run.count < Int(size) / VhdxLog.sectorSize, let following = entry(at: next, after: run.last!.sequence) {
                run.append(following)
                next = (following.position + following.length) % size
            }
            if best.isEmpty || run.last!.sequence > best.last!.sequence { best = run }
            position = first.position + first.length
        }
        return best
    }

    /// Applies a sequence of entries to the file: each data sector and zero run at its offset, the
    /// file grown to the last entry's `last_file_offset` (whole MiB), then flushed.
    static func replay(_ entries: [Entry], on file: BlockNode) throws(BlockError) {
        let zeroes = [UInt8](repeating: 0, count: 1 << 20)
        for entry in entries {
            var end: UInt64 = 0
            for change in entry.changes {
                switch change {
                case .data(let offset, _): end = max(end, offset + UInt64(sectorSize))
                case .zero(let offset, let length): end = max(end, offset + length)
                }
            }
            if end > file.length { try file.resize(to: end) }
            for change in entry.changes {
                switch change {
                case .data(let offset, let sector):
                    try sector.withBytes { (raw) throws(BlockError) in try file.write(raw, at: offset, fua: false) }
                case .zero(let offset, let length):
                    var done: UInt64 = 0
                    while done < length {
                        let count = Int(min(UInt64(zeroes.count), length - done))
                        try zeroes.withBytes { (raw) throws(BlockError) in
                            try file.write(UnsafeRawBufferPointer(rebasing: raw[0..<count]), at: offset + done, fua: false)
                        }
                        done += UInt64(count)
                    }
                }
            }
            if file.length < entry.lastFileOffset {
                try file.resize(to: (entry.lastFileOffset + (1 << 20) - 1) & ~((1 << 20) - 1))
            }
        }
        try file.flush()
    }
}
