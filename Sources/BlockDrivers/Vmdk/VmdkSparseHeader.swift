import BlockCore

/// Little-endian fields of VMDK structures.
enum VmdkBytes: LittleEndianOrder {}

/// The header of a hosted sparse extent (`KDMV`, VMware Virtual Disk Format 1.1, "Hosted Sparse
/// Extent Header"); sizes and offsets are in 512-byte sectors.
public struct VmdkSparseHeader: Sendable, Equatable {
    /// The magic number `KDMV` as the first four bytes of the file.
    public static let magic: [UInt8] = [0x4b, 0x44, 0x4d, 0x56]
    /// The magic of the older VMFS sparse (`COWD`) extents.
    public static let cowdMagic: [UInt8] = [0x43, 0x4f, 0x57, 0x44]
    /// `flags`: newline detection bytes are valid.
    public static let flagNewlineDetect: UInt32 = 1 << 0
    /// `flags`: a redundant grain directory is kept.
    public static let flagRedundantGD: UInt32 = 1 << 1
    /// `flags`: grain table entry 1 means a zeroed grain.
    public static let flagZeroGrain: UInt32 = 1 << 2
    /// `flags`: grains are compressed.
    public static let flagCompressed: UInt32 = 1 << 16
    /// `flags`: the extent has stream markers.
    public static let flagMarkers: UInt32 = 1 << 17
    /// `gdOffset` of a stream whose grain directory is found through the footer.
    public static let gdAtEnd: UInt64 = ~0
    /// Largest grain QEMU accepts (1 GiB in sectors).
    static let maxGrainSectors: UInt64 = 0x200000
    /// Largest grain directory QEMU accepts, in entries.
    static let maxDirectoryEntries: UInt64 = 32 << 20

    public var version: UInt32
    public var flags: UInt32
    /// The extent's size.
    public var capacity: UInt64
    /// Grain size.
    public var grainSectors: UInt64
    /// Where the embedded descriptor lies, and its size.
    public var descriptorOffset: UInt64
    public var descriptorSize: UInt64
    /// Grain table entries per grain table.
    public var gtesPerGT: UInt32
    /// The redundant grain directory (when `flagRedundantGD` is set).
    public var rgdOffset: UInt64
    /// The grain directory.
    public var gdOffset: UInt64
    /// Where grains may start.
    public var grainOffset: UInt64
    /// 1: deflate.
    public var compressAlgorithm: UInt16

    /// Creates a header from its fields.
    public init(version: UInt32, flags: UInt32, capacity: UInt64, grainSectors: UInt64, descriptorOffset: UInt64, descriptorSize: UInt64,
                gtesPerGT: UInt32, rgdOffset: UInt64, gdOffset: UInt64, grainOffset: UInt64, compressAlgorithm: UInt16) {
        self.version = version
        self.flags = flags
        self.capacity = capacity
        self.grainSectors = grainSectors
        self.descriptorOffset = descriptorOffset
        self.descriptorSize = descriptorSize
        self.gtesPerGT = gtesPerGT
        self.rgdOffset = rgdOffset
        self.gdOffset = gdOffset
        self.grainOffset = grainOffset
        self.compressAlgorithm = compressAlgorithm
    }

    /// True when grains are deflated.
    public var compressed: Bool { compressAlgorithm == 1 }
    /// Sectors one grain table covers.
    public var sectorsPerGT: UInt64 { UInt64(gtesPerGT) * grainSectors }
    /// Entries of the grain directory.
    public var directoryEntries: UInt64 { sectorsPerGT == 0 ? 0 : (capacity + sectorsPerGT - 1) / sectorsPerGT }

    /// Reads the fields of a header that starts with the magic (at least 512 bytes given, or 79).
    /// - Throws: `EINVAL` when the magic is not `KDMV`.
    public static func parse(_ bytes: [UInt8]) throws(BlockError) -> VmdkSparseHeader {
        guard bytes.count >= 79, Array(bytes[0..<4]) == magic else { throw .invalid("Image not in VMDK format") }
        return bytes.withUnsafeBytes { raw in
            VmdkSparseHeader(
                version: VmdkBytes.u32(raw, 4), flags: VmdkBytes.u32(raw, 8), capacity: VmdkBytes.u64(raw, 12),
                grainSectors: VmdkBytes.u64(raw, 20), descriptorOffset: VmdkBytes.u64(raw, 28), descriptorSize: VmdkBytes.u64(raw, 36),
                gtesPerGT: VmdkBytes.u32(raw, 44), rgdOffset: VmdkBytes.u64(raw, 48), gdOffset: VmdkBytes.u64(raw, 56),
                grainOffset: VmdkBytes.u64(raw, 64), compressAlgorithm: VmdkBytes.u16(raw, 77))
        }
    }

    /// Checks the header of an extent in a file of `fileLength` bytes as QEMU does at open, with its messages.
    public func validate(fileLength: UInt64, writable: Bool) throws(BlockError) {
        if version > 3 { throw .notSupported("Unsupported VMDK version \(version)") }
        if version == 3 && writable && !compressed { throw .invalid("VMDK version 3 must be read only") }
        if gtesPerGT > 512 { throw .invalid("L2 table size too big") }
        if grainSectors > Self.maxGrainSectors { throw .invalid("Invalid granularity, image may be corrupt") }
        if sectorsPerGT == 0 || sectorsPerGT > UInt64(UInt32.max) { throw .invalid("L1 entry size is invalid") }
        if fileLength / 512 < grainOffset {
            throw .invalid("File truncated, expecting at least \(grainOffset &* 512) bytes")
        }
        if capacity > UInt64(Int64.max) / 512 { throw .invalid("Invalid capacity, image may be corrupt") }
        if directoryEntries > Self.maxDirectoryEntries { throw .invalid("L1 size too big") }
        let tableBytes = directoryEntries * 4
        var tables: [(name: String, offset: UInt64)] = [("l1", gdOffset)]
        if flags & Self.flagRedundantGD != 0 { tables.append(("l1 backup", rgdOffset)) }
        for (name, offset) in tables {
            guard offset <= fileLength / 512, tableBytes <= fileLength - offset * 512 else {
                throw .invalid("Could not read \(name) table: it lies past the end of the file")
            }
        }
    }

    /// The 512-byte sector of this header (magic, fields, newline check bytes).
    public func serialized() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 512)
        bytes.replaceSubrange(0..<4, with: Self.magic)
        VmdkBytes.put(version, &bytes, 4)
        VmdkBytes.put(flags, &bytes, 8)
        VmdkBytes.put(capacity, &bytes, 12)
        VmdkBytes.put(grainSectors, &bytes, 20)
        VmdkBytes.put(descriptorOffset, &bytes, 28)
        VmdkBytes.put(descriptorSize, &bytes, 36)
        VmdkBytes.put(gtesPerGT, &bytes, 44)
        VmdkBytes.put(rgdOffset, &bytes, 48)
        VmdkBytes.put(gdOffset, &bytes, 56)
        VmdkBytes.put(grainOffset, &bytes, 64)
        bytes.replaceSubrange(73..<77, with: [0x0a, 0x20, 0x0d, 0x0a])
        VmdkBytes.put(compressAlgorithm, &bytes, 77)
        return bytes
    }
}
