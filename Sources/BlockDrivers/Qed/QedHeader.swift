import BlockCore

/// Little-endian loads and stores, the byte order of qed and parallels structures.
enum LittleEndian: LittleEndianOrder {}

/// The header of a qed image (QEMU's docs/interop/qed_spec).
public struct QedHeader: Sendable, Equatable {
    /// "QED\0".
    public static let magic: UInt32 = 0x0044_4551
    /// The size of the fixed header.
    public static let length = 64
    /// The image uses a backing file.
    public static let backingFileFeature: UInt64 = 1
    /// The image needs a consistency check before use.
    public static let needCheckFeature: UInt64 = 2
    /// The backing file is raw; do not probe it.
    public static let noProbeFeature: UInt64 = 4
    /// Every feature this driver knows.
    public static let knownFeatures: UInt64 = 7
    /// The value of a data-cluster entry that reads as zeroes.
    public static let zeroCluster: UInt64 = 1

    public var clusterSize: UInt32 = 65536
    public var tableSize: UInt32 = 4
    public var headerSize: UInt32 = 1
    public var features: UInt64 = 0
    public var compatFeatures: UInt64 = 0
    public var autoclearFeatures: UInt64 = 0
    public var l1TableOffset: UInt64 = 0
    public var imageSize: UInt64 = 0
    public var backingNameOffset: UInt32 = 0
    public var backingNameSize: UInt32 = 0
    /// The backing file name (read from the header clusters), nil without QED_F_BACKING_FILE.
    public var backingFile: String?

    /// A header with QEMU's defaults.
    public init() {}

    /// Bytes of one L1 or L2 table.
    public var tableBytes: Int { Int(tableSize) * Int(clusterSize) }
    /// Entries in one table.
    public var tableEntries: Int { tableBytes / 8 }
    /// log2 of the cluster size.
    public var clusterBits: Int { clusterSize.trailingZeroBitCount }
    /// The largest image size the tables can address.
    public var maxImageSize: UInt64 { UInt64(tableEntries) * UInt64(tableEntries) * UInt64(clusterSize) }
    /// Whether the image must be checked before use.
    public var needsCheck: Bool { features & QedHeader.needCheckFeature != 0 }
    /// `backing-filename-format` as qemu-img shows it: raw when probing is off, else unknown.
    public var backingFormat: String? { features & QedHeader.noProbeFeature != 0 && backingFile != nil ? "raw" : nil }

    /// Whether a cluster size is valid: a power of two from 4 KiB to 64 MiB.
    public static func validClusterSize(_ size: UInt64) -> Bool {
        size.nonzeroBitCount == 1 && size >= 4096 && size <= 64 << 20
    }

    /// Whether a table size (in clusters) is valid: a power of two from 1 to 16.
    public static func validTableSize(_ size: UInt64) -> Bool {
        size.nonzeroBitCount == 1 && size <= 16
    }

    /// Parses and validates the header in `bytes` (the header clusters, or at least 64 bytes of them).
    public static func parse(_ bytes: [UInt8], fileLength: UInt64) throws(BlockError) -> QedHeader {
        guard bytes.count >= length else { throw .invalid("image is too short to be qed") }
        var header = QedHeader()
        let magic = bytes.withUnsafeBytes { raw -> UInt32 in
            header.clusterSize = LittleEndian.u32(raw, 4)
            header.tableSize = LittleEndian.u32(raw, 8)
            header.headerSize = LittleEndian.u32(raw, 12)
            header.features = LittleEndian.u64(raw, 16)
            header.compatFeatures = LittleEndian.u64(raw, 24)
            header.autoclearFeatures = LittleEndian.u64(raw, 32)
            header.l1TableOffset = LittleEndian.u64(raw, 40)
            header.imageSize = LittleEndian.u64(raw, 48)
            header.backingNameOffset = LittleEndian.u32(raw, 56)
            header.backingNameSize = LittleEndian.u32(raw, 60)
            return LittleEndian.u32(raw, 0)
        }
        guard magic == QedHeader.magic else { throw .invalid("image is not in qed format") }
        let unknown = header.features & ~knownFeatures
        guard unknown == 0 else { throw .notSupported("Unsupported QED features: \(String(unknown, radix: 16))") }
        guard validClusterSize(UInt64(header.clusterSize)) else {
            throw .invalid("qed: invalid cluster size \(header.clusterSize)")
        }
        guard validTableSize(UInt64(header.tableSize)) else { throw .invalid("qed: invalid table size \(header.tableSize)") }
        guard header.headerSize >= 1 else {
            throw .invalid("qed: invalid header size \(header.headerSize)")
        }
        guard header.imageSize % 512 == 0, header.imageSize <= header.maxImageSize else {
            throw .invalid("qed: invalid image size \(header.imageSize)")
        }
        let l1 = header.l1TableOffset
        guard l1 != 0, l1 % UInt64(header.clusterSize) == 0,
              l1 >= UInt64(header.headerSize) * UInt64(header.clusterSize) else {
            throw .invalid("qed: invalid L1 table offset \(l1)")
        }
        guard l1 <= fileLength, UInt64(header.tableBytes) <= fileLength - l1 else {
            throw .invalid("qed: the L1 table at \(l1) lies past the end of the file (\(fileLength) bytes)")
        }
        if header.features & backingFileFeature != 0 {
            let start = Int(header.backingNameOffset)
            let count = Int(header.backingNameSize)
            let limit = UInt64(header.headerSize) * UInt64(header.clusterSize)
            guard start >= length, count <= 1023, UInt64(start) + UInt64(count) <= limit else {
                throw .invalid("qed: the backing file name lies outside the header")
            }
            guard start + count <= bytes.count else { throw .invalid("qed: the backing file name lies past the end of the file") }
            header.backingFile = String(decoding: bytes[start..<start + count], as: UTF8.self)
        }
        return header
    }

    /// The 64 bytes of the fixed header.
    public func serialized() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: QedHeader.length)
        bytes.withUnsafeMutableBytes { raw in
            LittleEndian.put(QedHeader.magic, raw, 0)
            LittleEndian.put(clusterSize, raw, 4)
            LittleEndian.put(tableSize, raw, 8)
            LittleEndian.put(headerSize, raw, 12)
            LittleEndian.put(features, raw, 16)
            LittleEndian.put(compatFeatures, raw, 24)
            LittleEndian.put(autoclearFeatures, raw, 32)
            LittleEndian.put(l1TableOffset, raw, 40)
            LittleEndian.put(imageSize, raw, 48)
            LittleEndian.put(backingNameOffset, raw, 56)
            LittleEndian.put(backingNameSize, raw, 60)
        }
        return bytes
    }

    /// The header and the backing file name after it, as written at offset 0.
    public func serializedWithName() -> [UInt8] {
        var bytes = serialized()
        if let backingFile, features & QedHeader.backingFileFeature != 0 {
            let name = Array(backingFile.utf8)
            let start = Int(backingNameOffset)
            if bytes.count < start + name.count { bytes += [UInt8](repeating: 0, count: start + name.count - bytes.count) }
            bytes.replaceSubrange(start..<start + name.count, with: name)
        }
        return bytes
    }

    /// Reads and parses the header of the image in `file`.
    public static func read(_ file: BlockNode) throws(BlockError) -> QedHeader {
        let first = try ImageBacking.readBytes(file, at: 0, count: Int(min(file.length, 4096)), what: "the qed header")
        guard first.count >= length else { throw .invalid("image is too short to be qed") }
        let (clusterSize, headerSize) = first.withUnsafeBytes { (LittleEndian.u32($0, 4), LittleEndian.u32($0, 12)) }
        // The backing name may lie anywhere in the header clusters; read them when they are sane.
        var bytes = first
        let whole = UInt64(clusterSize) * UInt64(headerSize)
        if validClusterSize(UInt64(clusterSize)), headerSize >= 1, whole <= 16 << 20, whole > UInt64(first.count) {
            bytes = try ImageBacking.readBytes(file, at: 0, count: Int(min(whole, file.length)), what: "the qed header")
        }
        return try parse(bytes, fileLength: file.length)
    }
}
