import BlockCore

/// The qcow2 image header with its extensions, as stored in the first cluster of the image.
public struct Qcow2Header: Sendable {
    /// `QFI\xfb`.
    public static let magic: UInt32 = 0x5146_49fb
    /// Incompatible feature bits.
    public static let dirtyBit: UInt64 = 1 << 0
    /// The image is corrupt: it may only be opened read-only.
    public static let corruptBit: UInt64 = 1 << 1
    /// Incompatible features this driver implements.
    static let knownIncompatible: UInt64 = dirtyBit | corruptBit | (1 << 3)
    /// Compatible feature: lazy refcounts.
    public static let lazyRefcountsBit: UInt64 = 1 << 0
    /// Extension types.
    static let endOfExtensions: UInt32 = 0
    static let backingFormatExtension: UInt32 = 0xe279_2aca
    static let featureNameExtension: UInt32 = 0x6803_f857
    static let bitmapsExtension: UInt32 = 0x2385_2875

    public var version: UInt32 = 3
    public var backingFileOffset: UInt64 = 0
    public var backingFileSize: UInt32 = 0
    public var clusterBits: UInt32 = 16
    public var size: UInt64 = 0
    public var cryptMethod: UInt32 = 0
    public var l1Size: UInt32 = 0
    public var l1TableOffset: UInt64 = 0
    public var refcountTableOffset: UInt64 = 0
    public var refcountTableClusters: UInt32 = 0
    public var snapshotCount: UInt32 = 0
    public var snapshotsOffset: UInt64 = 0
    public var incompatibleFeatures: UInt64 = 0
    public var compatibleFeatures: UInt64 = 0
    public var autoclearFeatures: UInt64 = 0
    public var refcountOrder: UInt32 = 4
    public var headerLength: UInt32 = 104
    public var compressionType: UInt8 = 0
    /// The backing file name, when there is one.
    public var backingFile: String?
    /// The backing file's format, from its header extension.
    public var backingFormat: String?
    /// Extensions this driver does not interpret, kept as they are (type, payload).
    public var otherExtensions: [(type: UInt32, data: [UInt8])] = []

    /// A header with the defaults of a new version-3 image.
    public init() {}

    public var clusterSize: Int { 1 << Int(clusterBits) }
    public var refcountBits: Int { 1 << Int(refcountOrder) }
    public var lazyRefcounts: Bool { compatibleFeatures & Qcow2Header.lazyRefcountsBit != 0 }
    public var isCorrupt: Bool { incompatibleFeatures & Qcow2Header.corruptBit != 0 }
    public var isDirty: Bool { incompatibleFeatures & Qcow2Header.dirtyBit != 0 }
    /// Autoclear feature: the bitmaps extension is consistent with the image's data.
    public static let bitmapsAutoclearBit: UInt64 = 1 << 0
    /// True when the image carries persistent bitmaps that are in step with its data.
    public var hasConsistentBitmaps: Bool {
        autoclearFeatures & Qcow2Header.bitmapsAutoclearBit != 0
            && otherExtensions.contains { $0.type == Qcow2Header.bitmapsExtension }
    }

    /// Parses and validates a header from the start of an image (at least one cluster, or 64 KiB).
    public static func parse(_ bytes: [UInt8], fileLength: UInt64) throws(BlockError) -> Qcow2Header {
        guard bytes.count >= 72 else { throw .invalid("image is too short to be qcow2 (\(bytes.count) bytes)") }
        var header = Qcow2Header()
        let problem: String? = bytes.withUnsafeBytes { raw -> String? in
            guard Qcow2Bytes.u32(raw, 0) == magic else { return "not a qcow2 image (bad magic)" }
            header.version = Qcow2Bytes.u32(raw, 4)
            guard header.version == 2 || header.version == 3 else { return "unsupported qcow2 version \(header.version)" }
            header.backingFileOffset = Qcow2Bytes.u64(raw, 8)
            header.backingFileSize = Qcow2Bytes.u32(raw, 16)
            header.clusterBits = Qcow2Bytes.u32(raw, 20)
            header.size = Qcow2Bytes.u64(raw, 24)
            header.cryptMethod = Qcow2Bytes.u32(raw, 32)
            header.l1Size = Qcow2Bytes.u32(raw, 36)
            header.l1TableOffset = Qcow2Bytes.u64(raw, 40)
            header.refcountTableOffset = Qcow2Bytes.u64(raw, 48)
            header.refcountTableClusters = Qcow2Bytes.u32(raw, 56)
            header.snapshotCount = Qcow2Bytes.u32(raw, 60)
            header.snapshotsOffset = Qcow2Bytes.u64(raw, 64)
            if header.version == 2 {
                header.headerLength = 72
                header.refcountOrder = 4
            } else {
                guard raw.count >= 104 else { return "version 3 header is truncated" }
                header.incompatibleFeatures = Qcow2Bytes.u64(raw, 72)
                header.compatibleFeatures = Qcow2Bytes.u64(raw, 80)
                header.autoclearFeatures = Qcow2Bytes.u64(raw, 88)
                header.refcountOrder = Qcow2Bytes.u32(raw, 96)
                header.headerLength = Qcow2Bytes.u32(raw, 100)
                guard header.headerLength >= 104, Int(header.headerLength) <= raw.count else {
                    return "header length \(header.headerLength) is out of range"
                }
                if header.headerLength > 104 { header.compressionType = raw[104] }
            }
            return nil
        }
        if let problem { throw .invalid(problem) }
        try header.validate(fileLength: fileLength)
        try header.parseExtensions(bytes)
        return header
    }

    private func validate(fileLength: UInt64) throws(BlockError) {
        guard (9...21).contains(clusterBits) else { throw .invalid("cluster size 2^\(clusterBits) is out of range (512 B to 2 MiB)") }
        guard refcountOrder <= 6 else { throw .invalid("refcount width 2^\(refcountOrder) bits is out of range (1 to 64)") }
        guard cryptMethod == 0 else { throw .notSupported("encrypted qcow2 images are not supported") }
        let unknown = incompatibleFeatures & ~Qcow2Header.knownIncompatible
        guard unknown == 0 else { throw .notSupported("unsupported qcow2 incompatible features 0x\(String(unknown, radix: 16))") }
        guard compressionType == 0 else { throw .notSupported("qcow2 compression type \(compressionType) is not supported (only zlib)") }
        let mask = UInt64(clusterSize - 1)
        guard l1TableOffset & mask == 0, refcountTableOffset & mask == 0, snapshotsOffset & mask == 0 else {
            throw .invalid("a table offset in the header is not cluster aligned")
        }
        guard refcountTableClusters > 0, refcountTableOffset > 0 else { throw .invalid("the image has no refcount table") }
        // Every value here comes from the file: range checks come before any arithmetic that could overflow.
        guard size <= Qcow2Header.maxSize else { throw .invalid("image size \(size) is out of range") }
        guard UInt64(refcountTableClusters) << clusterBits <= Qcow2Header.maxRefcountTableBytes else {
            throw .invalid("refcount table is too large")
        }
        guard UInt64(l1Size) * 8 <= Qcow2Header.maxL1Bytes else { throw .invalid("L1 table is too large (\(l1Size) entries)") }
        let needed = Qcow2Header.l1Entries(covering: size, clusterBits: clusterBits)
        guard UInt64(l1Size) >= needed else { throw .invalid("L1 table (\(l1Size) entries) is too small for the image size \(size)") }
        for (name, offset, length) in [
            ("L1 table", l1TableOffset, UInt64(l1Size) * 8),
            ("refcount table", refcountTableOffset, UInt64(refcountTableClusters) << clusterBits),
        ] where length > 0 && (offset > fileLength || length > fileLength - offset) {
            throw .invalid("\(name) at \(offset)+\(length) lies past the end of the file (\(fileLength) bytes)")
        }
        if snapshotCount > 0 {
            guard snapshotCount <= Qcow2Header.maxSnapshots else { throw .invalid("too many snapshots (\(snapshotCount))") }
            guard snapshotsOffset > 0, snapshotsOffset < fileLength else {
                throw .invalid("snapshot table at \(snapshotsOffset) lies past the end of the file (\(fileLength) bytes)")
            }
        }
        guard backingFileOffset == 0
            || (backingFileSize <= 1023 && backingFileOffset < UInt64(clusterSize)
                && UInt64(backingFileSize) <= UInt64(clusterSize) - backingFileOffset) else {
            throw .invalid("backing file name is out of range")
        }
    }

    /// Largest guest size accepted (at open and on resize).
    public static let maxSize: UInt64 = 1 << 56
    /// Largest L1 table, in bytes (QEMU's limit too).
    public static let maxL1Bytes: UInt64 = 32 << 20
    /// Largest refcount table, in bytes.
    public static let maxRefcountTableBytes: UInt64 = 8 << 20
    /// Most internal snapshots (QEMU's limit).
    public static let maxSnapshots: UInt32 = 65536

    /// L1 entries needed to map `size` guest bytes with clusters of 2^`clusterBits` bytes (no overflow for any size).
    public static func l1Entries(covering size: UInt64, clusterBits: UInt32) -> UInt64 {
        let coverageBits = UInt64(clusterBits) * 2 - 3
        let whole = size >> coverageBits
        return size & ((1 << coverageBits) - 1) == 0 ? whole : whole + 1
    }

    private mutating func parseExtensions(_ bytes: [UInt8]) throws(BlockError) {
        if backingFileOffset > 0 {
            guard Int(backingFileOffset) + Int(backingFileSize) <= bytes.count else { throw .invalid("backing file name is truncated") }
            backingFile = String(decoding: bytes[Int(backingFileOffset)..<Int(backingFileOffset) + Int(backingFileSize)], as: UTF8.self)
        }
        var position = Int(headerLength)
        let end = backingFileOffset > 0 ? Int(backingFileOffset) : bytes.count
        while position + 8 <= end {
            let (type, length) = bytes.withUnsafeBytes { (Qcow2Bytes.u32($0, position), Int(Qcow2Bytes.u32($0, position + 4))) }
            if type == Qcow2Header.endOfExtensions { return }
            guard position + 8 + length <= end else { throw .invalid("header extension 0x\(String(type, radix: 16)) is truncated") }
            let data = Array(bytes[position + 8..<position + 8 + length])
            switch type {
            case Qcow2Header.backingFormatExtension: backingFormat = String(decoding: data, as: UTF8.self)
            case Qcow2Header.featureNameExtension: break
            default: otherExtensions.append((type, data))
            }
            position += 8 + (length + 7) / 8 * 8
        }
    }

    /// The header and its extensions as bytes (at most one cluster).
    public func serialized() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(version == 2 ? 72 : max(headerLength, 104)))
        out.withUnsafeMutableBytes { raw in
            Qcow2Bytes.put(Qcow2Header.magic, raw, 0)
            Qcow2Bytes.put(version, raw, 4)
            Qcow2Bytes.put(clusterBits, raw, 20)
            Qcow2Bytes.put(size, raw, 24)
            Qcow2Bytes.put(cryptMethod, raw, 32)
            Qcow2Bytes.put(l1Size, raw, 36)
            Qcow2Bytes.put(l1TableOffset, raw, 40)
            Qcow2Bytes.put(refcountTableOffset, raw, 48)
            Qcow2Bytes.put(refcountTableClusters, raw, 56)
            Qcow2Bytes.put(snapshotCount, raw, 60)
            Qcow2Bytes.put(snapshotsOffset, raw, 64)
            if version == 3 {
                Qcow2Bytes.put(incompatibleFeatures, raw, 72)
                Qcow2Bytes.put(compatibleFeatures, raw, 80)
                Qcow2Bytes.put(autoclearFeatures, raw, 88)
                Qcow2Bytes.put(refcountOrder, raw, 96)
                Qcow2Bytes.put(UInt32(raw.count), raw, 100)
                if raw.count > 104 { raw[104] = compressionType }
            }
        }
        func appendExtension(_ type: UInt32, _ data: [UInt8]) {
            var head = [UInt8](repeating: 0, count: 8)
            head.withUnsafeMutableBytes { Qcow2Bytes.put(type, $0, 0); Qcow2Bytes.put(UInt32(data.count), $0, 4) }
            out += head + data + [UInt8](repeating: 0, count: (8 - data.count % 8) % 8)
        }
        if let backingFormat { appendExtension(Qcow2Header.backingFormatExtension, Array(backingFormat.utf8)) }
        if version == 3 { appendExtension(Qcow2Header.featureNameExtension, Qcow2Header.featureNameTable) }
        for (type, data) in otherExtensions { appendExtension(type, data) }
        out += [UInt8](repeating: 0, count: 8)
        if let backingFile {
            let name = Array(backingFile.utf8)
            out.withUnsafeMutableBytes { raw in
                Qcow2Bytes.put(UInt64(raw.count), raw, 8)
                Qcow2Bytes.put(UInt32(name.count), raw, 16)
            }
            out += name
        }
        return out
    }

    /// The feature name table extension: names for the feature bits this driver knows.
    private static let featureNameTable: [UInt8] = {
        let names: [(UInt8, UInt8, String)] = [
            (0, 0, "dirty bit"), (0, 1, "corrupt bit"), (0, 3, "compression type"), (1, 0, "lazy refcounts"),
        ]
        var out: [UInt8] = []
        for (kind, bit, name) in names {
            var entry = [UInt8](repeating: 0, count: 48)
            entry[0] = kind
            entry[1] = bit
            for (index, byte) in name.utf8.enumerated() { entry[2 + index] = byte }
            out += entry
        }
        return out
    }()
}
