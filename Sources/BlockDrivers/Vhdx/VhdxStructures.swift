#if canImport(Glibc)
import Glibc
#endif
import BlockCore

/// Little-endian loads and stores, the byte order of every VHDX structure.
enum VhdxBytes: LittleEndianOrder {
    /// CRC-32C (Castagnoli), the checksum of VHDX headers, region tables and log entries.
    static func crc32c(_ bytes: [UInt8], zeroing field: Int? = nil) -> UInt32 {
        var crc: UInt32 = 0xffff_ffff
        for (index, byte) in bytes.enumerated() {
            let value = field.map { index >= $0 && index < $0 + 4 } == true ? 0 : byte
            crc = crcTable[Int((crc ^ UInt32(value)) & 0xff)] ^ (crc >> 8)
        }
        return ~crc
    }

    private static let crcTable: [UInt32] = (0..<256).map { index in
        var value = UInt32(index)
        for _ in 0..<8 { value = value & 1 != 0 ? (value >> 1) ^ 0x82f6_3b78 : value >> 1 }
        return value
    }

    /// Stores the CRC-32C of `bytes` (with the field counted as zero) in the field at `field`.
    static func seal(_ bytes: inout [UInt8], checksumAt field: Int) {
        put(crc32c(bytes, zeroing: field), &bytes, field)
    }

    /// True when the CRC-32C stored at `field` matches.
    static func sealed(_ bytes: [UInt8], checksumAt field: Int) -> Bool {
        crc32c(bytes, zeroing: field) == u32(bytes, field)
    }
}

/// A Microsoft GUID as stored: its 16 bytes (data1–data3 little-endian).
struct VhdxGUID: Hashable, Sendable {
    var bytes: [UInt8]

    /// The GUID written as text (`2DC27766-F623-4200-9D64-115E9BFD4A08`).
    init(_ text: String) {
        let hex = text.filter { $0 != "-" }
        let values = stride(from: 0, to: 32, by: 2).map { UInt8(hex[hex.index(hex.startIndex, offsetBy: $0)..<hex.index(hex.startIndex, offsetBy: $0 + 2)], radix: 16)! }
        bytes = [values[3], values[2], values[1], values[0], values[5], values[4], values[7], values[6]] + Array(values[8..<16])
    }

    init(bytes: [UInt8]) { self.bytes = bytes }

    static func random() -> VhdxGUID { VhdxGUID(bytes: FormatOptions.randomUUID()) }

    var isZero: Bool { bytes.allSatisfy { $0 == 0 } }

    static let bat = VhdxGUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
    static let metadata = VhdxGUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
    static let fileParameters = VhdxGUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
    static let virtualDiskSize = VhdxGUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
    static let page83 = VhdxGUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
    static let logicalSectorSize = VhdxGUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
    static let physicalSectorSize = VhdxGUID("CDA348C7-445D-4471-9CC9-E9885251C556")
    static let parentLocator = VhdxGUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
}

/// One of the two VHDX headers (at 64 KiB and 128 KiB; the valid one with the higher sequence rules).
struct VhdxHeader: Sendable {
    static let signature: UInt32 = 0x6461_6568  // "head"
    static let size = 4096
    var sequence: UInt64
    var fileWriteGUID: VhdxGUID
    var dataWriteGUID: VhdxGUID
    var logGUID: VhdxGUID
    var logVersion: UInt16
    var version: UInt16
    var logLength: UInt32
    var logOffset: UInt64

    /// The header in these 4 KiB, or nil when its signature or checksum is wrong.
    static func parse(_ bytes: [UInt8]) -> VhdxHeader? {
        guard bytes.count >= size, VhdxBytes.u32(bytes, 0) == signature,
              VhdxBytes.sealed(Array(bytes[0..<size]), checksumAt: 4) else { return nil }
        return VhdxHeader(
            sequence: VhdxBytes.u64(bytes, 8), fileWriteGUID: VhdxGUID(bytes: Array(bytes[16..<32])),
            dataWriteGUID: VhdxGUID(bytes: Array(bytes[32..<48])), logGUID: VhdxGUID(bytes: Array(bytes[48..<64])),
            logVersion: VhdxBytes.u16(bytes, 64), version: VhdxBytes.u16(bytes, 66),
            logLength: VhdxBytes.u32(bytes, 68), logOffset: VhdxBytes.u64(bytes, 72))
    }

    /// The 4 KiB with the checksum.
    func bytes() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: VhdxHeader.size)
        VhdxBytes.put(VhdxHeader.signature, &out, 0)
        VhdxBytes.put(sequence, &out, 8)
        out.replaceSubrange(16..<32, with: fileWriteGUID.bytes)
        out.replaceSubrange(32..<48, with: dataWriteGUID.bytes)
        out.replaceSubrange(48..<64, with: logGUID.bytes)
        VhdxBytes.put(logVersion, &out, 64)
        VhdxBytes.put(version, &out, 66)
        VhdxBytes.put(logLength, &out, 68)
        VhdxBytes.put(logOffset, &out, 72)
        VhdxBytes.seal(&out, checksumAt: 4)
        return out
    }
}

/// An entry of the region table or of the metadata table.
struct VhdxTableEntry: Sendable {
    var guid: VhdxGUID
    var offset: UInt64
    var length: UInt32
    var flags: UInt32
}

/// The virtual disk's parameters from the metadata region.
struct VhdxParameters: Sendable {
    var blockSize: UInt32
    var leaveBlocksAllocated: Bool
    var hasParent: Bool
    var virtualSize: UInt64
    var logicalSectorSize: UInt32
    var physicalSectorSize: UInt32
    var page83: [UInt8]

    /// Payload blocks per chunk (one sector bitmap entry follows each chunk's payload entries).
    var chunkRatio: UInt64 { (UInt64(1) << 23) * UInt64(logicalSectorSize) / UInt64(blockSize) }
    /// Payload blocks of the disk.
    var dataBlocks: UInt64 { (virtualSize + UInt64(blockSize) - 1) / UInt64(blockSize) }
    /// BAT entries of a disk without a parent: the payload entries with a bitmap entry after each full chunk.
    var batEntries: UInt64 { dataBlocks == 0 ? 0 : dataBlocks + (dataBlocks - 1) / chunkRatio }
    /// The BAT index of payload block `block`.
    func batIndex(ofBlock block: UInt64) -> UInt64 { block + block / chunkRatio }
}

/// Payload block states of BAT entries.
enum VhdxBlockState {
    static let notPresent: UInt64 = 0
    static let undefined: UInt64 = 1
    static let zero: UInt64 = 2
    static let unmapped: UInt64 = 3
    static let fullyPresent: UInt64 = 6
    static let partiallyPresent: UInt64 = 7
    static let offsetMask: UInt64 = 0xffff_ffff_fff0_0000
}
