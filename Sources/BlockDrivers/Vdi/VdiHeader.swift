#if canImport(Glibc)
import Glibc
#endif
import BlockCore

/// Little-endian loads and stores, the byte order of every VDI structure.
enum VdiBytes: LittleEndianOrder {}

/// The 512-byte header of a VirtualBox disk image (VDI 1.1), as QEMU reads and writes it.
public struct VdiHeader: Sendable, Equatable {
    /// `signature` of every VDI image.
    public static let signature: UInt32 = 0xbeda_107f
    /// Version 1.1, the only one read.
    public static let version: UInt32 = 0x0001_0001
    /// The block size QEMU supports (1 MiB).
    public static let blockSize: UInt32 = 1 << 20
    /// Most blocks a block map may hold.
    public static let maxBlocks: UInt32 = 0x3fff_ffff
    /// Largest virtual size.
    public static let maxDiskSize = UInt64(maxBlocks) * UInt64(blockSize)
    /// Block map entry of a block never allocated.
    public static let unallocated: UInt32 = 0xffff_ffff
    /// Block map entry of a discarded block (reads as zeroes).
    public static let discarded: UInt32 = 0xffff_fffe
    /// The text QEMU writes at the start of the images it creates.
    public static let qemuText = "<<< QEMU VM Virtual Disk Image >>>\n"
    /// Image types.
    public static let typeDynamic: UInt32 = 1
    public static let typeStatic: UInt32 = 2
    /// Offset of `blocks_allocated`, rewritten as blocks are allocated.
    static let blocksAllocatedOffset = 0x184

    public var imageType: UInt32
    public var offsetBmap: UInt32
    public var offsetData: UInt32
    public var sectorSize: UInt32 = 512
    /// The virtual size as stored (may be odd: `size` rounds it up to a sector).
    public var diskSize: UInt64
    public var blockSize: UInt32
    public var blocksInImage: UInt32
    public var blocksAllocated: UInt32
    public var uuidImage = [UInt8](repeating: 0, count: 16)
    public var uuidLastSnap = [UInt8](repeating: 0, count: 16)
    public var uuidLink = [UInt8](repeating: 0, count: 16)
    public var uuidParent = [UInt8](repeating: 0, count: 16)
    var signatureField = VdiHeader.signature
    var versionField = VdiHeader.version

    /// The virtual size: the stored size rounded up to whole sectors, as QEMU opens it.
    public var size: UInt64 { (diskSize + 511) / 512 * 512 }
    /// Bytes of the block map on disk, whole sectors.
    public var bmapBytes: UInt64 { (UInt64(blocksInImage) * 4 + 511) / 512 * 512 }

    /// A new header for an image of `size` bytes (QEMU's layout: the map at 512, data after it).
    public init(size: UInt64, isStatic: Bool) {
        let blocks = UInt32((size + UInt64(VdiHeader.blockSize) - 1) / UInt64(VdiHeader.blockSize))
        imageType = isStatic ? VdiHeader.typeStatic : VdiHeader.typeDynamic
        offsetBmap = 0x200
        diskSize = size
        blockSize = VdiHeader.blockSize
        blocksInImage = blocks
        blocksAllocated = isStatic ? blocks : 0
        offsetData = 0
        offsetData = 0x200 + UInt32(bmapBytes)
    }

    /// Parses and validates a header, with QEMU's messages for what it refuses.
    public static func parse(_ bytes: [UInt8]) throws(BlockError) -> VdiHeader {
        guard bytes.count >= 512 else { throw .invalid("Image not in VDI format (the file is too short for a header)") }
        let header = bytes.withUnsafeBytes { raw in
            var h = VdiHeader(size: 0, isStatic: false)
            h.signatureField = VdiBytes.u32(raw, 64)
            h.versionField = VdiBytes.u32(raw, 68)
            h.imageType = VdiBytes.u32(raw, 76)
            h.offsetBmap = VdiBytes.u32(raw, 340)
            h.offsetData = VdiBytes.u32(raw, 344)
            h.sectorSize = VdiBytes.u32(raw, 360)
            h.diskSize = VdiBytes.u64(raw, 368)
            h.blockSize = VdiBytes.u32(raw, 376)
            h.blocksInImage = VdiBytes.u32(raw, 384)
            h.blocksAllocated = VdiBytes.u32(raw, 388)
            h.uuidImage = Array(bytes[392..<408])
            h.uuidLastSnap = Array(bytes[408..<424])
            h.uuidLink = Array(bytes[424..<440])
            h.uuidParent = Array(bytes[440..<456])
            return h
        }
        if header.diskSize > maxDiskSize {
            throw BlockError(errno: ENOTSUP, "Unsupported VDI image size (size is 0x\(hex(header.diskSize)), max supported is 0x\(hex(maxDiskSize)))")
        }
        func unsupported(_ what: String) -> BlockError { BlockError(errno: ENOTSUP, "unsupported VDI image (\(what))") }
        let blockRoom = UInt64(header.blocksInImage) * UInt64(header.blockSize)
        if header.signatureField != signature {
            throw .invalid("Image not in VDI format (bad signature \(hex(UInt64(header.signatureField), width: 8)))")
        } else if header.versionField != version {
            throw unsupported("version \(header.versionField >> 16).\(header.versionField & 0xffff)")
        } else if header.offsetBmap % 512 != 0 {
            throw unsupported("unaligned block map offset 0x\(hex(UInt64(header.offsetBmap))))")
        } else if header.offsetData % 512 != 0 {
            throw unsupported("unaligned data offset 0x\(hex(UInt64(header.offsetData))))")
        } else if header.sectorSize != 512 {
            throw unsupported("sector size \(header.sectorSize) is not 512")
        } else if header.blockSize != blockSize {
            throw unsupported("block size \(header.blockSize) is not \(blockSize)")
        } else if header.size > blockRoom {
            throw unsupported("disk size \(header.size), image bitmap has room for \(blockRoom)")
        } else if header.uuidLink.contains(where: { $0 != 0 }) {
            throw unsupported("non-NULL link UUID")
        } else if header.uuidParent.contains(where: { $0 != 0 }) {
            throw unsupported("non-NULL parent UUID")
        } else if header.blocksInImage > maxBlocks {
            throw unsupported("too many blocks \(header.blocksInImage), max is \(maxBlocks)")
        }
        return header
    }

    /// The 512 bytes of the header.
    public func bytes() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 512)
        let text = Array(VdiHeader.qemuText.utf8)
        out.replaceSubrange(0..<text.count, with: text)
        out.withUnsafeMutableBytes { raw in
            VdiBytes.put(signatureField, raw, 64)
            VdiBytes.put(versionField, raw, 68)
            VdiBytes.put(UInt32(0x180), raw, 72)
            VdiBytes.put(imageType, raw, 76)
            VdiBytes.put(offsetBmap, raw, 340)
            VdiBytes.put(offsetData, raw, 344)
            VdiBytes.put(sectorSize, raw, 360)
            VdiBytes.put(diskSize, raw, 368)
            VdiBytes.put(blockSize, raw, 376)
            VdiBytes.put(blocksInImage, raw, 384)
            VdiBytes.put(blocksAllocated, raw, 388)
        }
        out.replaceSubrange(392..<408, with: uuidImage)
        out.replaceSubrange(408..<424, with: uuidLastSnap)
        out.replaceSubrange(424..<440, with: uuidLink)
        out.replaceSubrange(440..<456, with: uuidParent)
        return out
    }

    static func hex(_ value: UInt64, width: Int = 0) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }
}
