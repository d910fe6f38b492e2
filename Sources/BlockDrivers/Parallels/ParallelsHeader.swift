import BlockCore

/// The header of a Parallels expandable image (QEMU's docs/interop/parallels.txt): 64 bytes,
/// little-endian, followed by the BAT.
public struct ParallelsHeader: Sendable, Equatable {
    /// The magic of images whose BAT counts sectors.
    public static let oldMagic = Array("WithoutFreeSpace".utf8)
    /// The magic of images whose BAT counts clusters.
    public static let extMagic = Array("WithouFreSpacExt".utf8)
    /// `in_use` while an image is open read-write.
    public static let inUseMagic: UInt32 = 0x746F_6E59
    /// The size of the header.
    public static let length = 64

    /// Whether the BAT counts clusters ("WithouFreSpacExt") rather than sectors.
    public var extended = true
    public var heads: UInt32 = 16
    public var cylinders: UInt32 = 0
    /// Sectors per cluster.
    public var tracks: UInt32 = 2048
    public var batEntries: UInt32 = 0
    public var sectors: UInt64 = 0
    public var inUse: UInt32 = 0
    /// The start of the data area, in sectors.
    public var dataOffset: UInt32 = 0
    public var flags: UInt32 = 0
    public var extensionOffset: UInt64 = 0

    /// An empty header.
    public init() {}

    /// Bytes in a cluster.
    public var clusterSize: UInt64 { UInt64(tracks) * 512 }
    /// The virtual size in bytes.
    public var size: UInt64 { sectors * 512 }
    /// Where the data area starts, in bytes.
    public var dataStart: UInt64 { UInt64(dataOffset) * 512 }
    /// What a BAT entry is multiplied by to give a sector number.
    public var entryUnit: UInt64 { extended ? UInt64(tracks) : 1 }

    /// Parses and validates a header.
    public static func parse(_ bytes: [UInt8], fileLength: UInt64) throws(BlockError) -> ParallelsHeader {
        guard bytes.count >= length else { throw .invalid("Image not in Parallels format") }
        var header = ParallelsHeader()
        let magic = Array(bytes[0..<16])
        guard magic == oldMagic || magic == extMagic else { throw .invalid("Image not in Parallels format") }
        header.extended = magic == extMagic
        let version = bytes.withUnsafeBytes { raw -> UInt32 in
            header.heads = LittleEndian.u32(raw, 20)
            header.cylinders = LittleEndian.u32(raw, 24)
            header.tracks = LittleEndian.u32(raw, 28)
            header.batEntries = LittleEndian.u32(raw, 32)
            header.sectors = LittleEndian.u64(raw, 36)
            header.inUse = LittleEndian.u32(raw, 44)
            header.dataOffset = LittleEndian.u32(raw, 48)
            header.flags = LittleEndian.u32(raw, 52)
            header.extensionOffset = LittleEndian.u64(raw, 56)
            return LittleEndian.u32(raw, 16)
        }
        guard version == 2 else { throw .notSupported("Unsupported Parallels image version \(version)") }
        if !header.extended { header.sectors &= 0xffff_ffff }
        guard header.tracks != 0 else { throw .invalid("Invalid image: Zero sectors per track") }
        guard header.tracks <= UInt32(Int32.max) / 513 else { throw .invalid("Invalid image: Too big cluster") }
        guard header.batEntries <= UInt32(Int32.max) / 4 else { throw .invalid("Catalog too large") }
        let batEnd = UInt64(length) + UInt64(header.batEntries) * 4
        if header.dataOffset == 0 {
            header.dataOffset = UInt32((batEnd + 511) / 512)
        }
        guard header.dataStart >= batEnd else { throw .invalid("Invalid image: data offset is inside the BAT") }
        guard batEnd <= fileLength else { throw .invalid("Invalid image: the BAT lies past the end of the file") }
        guard header.size <= UInt64(header.batEntries) * header.clusterSize else {
            throw .invalid("Invalid image: the BAT is too small for a size of \(header.size) bytes")
        }
        return header
    }

    /// The 64 bytes of the header.
    public func serialized() -> [UInt8] {
        var bytes = extended ? ParallelsHeader.extMagic : ParallelsHeader.oldMagic
        bytes += [UInt8](repeating: 0, count: ParallelsHeader.length - 16)
        bytes.withUnsafeMutableBytes { raw in
            LittleEndian.put(UInt32(2), raw, 16)
            LittleEndian.put(heads, raw, 20)
            LittleEndian.put(cylinders, raw, 24)
            LittleEndian.put(tracks, raw, 28)
            LittleEndian.put(batEntries, raw, 32)
            LittleEndian.put(sectors, raw, 36)
            LittleEndian.put(inUse, raw, 44)
            LittleEndian.put(dataOffset, raw, 48)
            LittleEndian.put(flags, raw, 52)
            LittleEndian.put(extensionOffset, raw, 56)
        }
        return bytes
    }

    /// Reads and parses the header of the image in `file`.
    public static func read(_ file: BlockNode) throws(BlockError) -> ParallelsHeader {
        guard file.length >= UInt64(length) else { throw .invalid("Image not in Parallels format") }
        return try parse(try ImageBacking.readBytes(file, at: 0, count: length, what: "the parallels header"), fileLength: file.length)
    }

    /// The BAT of the image in `file`.
    public func readBAT(_ file: BlockNode) throws(BlockError) -> [UInt32] {
        let bytes = try ImageBacking.readBytes(file, at: UInt64(ParallelsHeader.length), count: Int(batEntries) * 4, what: "the parallels BAT")
        return bytes.withUnsafeBytes { raw in (0..<Int(batEntries)).map { LittleEndian.u32(raw, $0 * 4) } }
    }
}
