#if canImport(Glibc)
import Glibc
#endif
import BlockCore

/// Big-endian loads and stores, the byte order of every VHD structure.
enum VpcBytes: BigEndianOrder {
    /// The VHD checksum: the one's complement of the byte sum, with the checksum field (at
    /// `field`) counted as zero.
    static func checksum(_ bytes: [UInt8], field: Int) -> UInt32 {
        var sum: UInt32 = 0
        for (index, byte) in bytes.enumerated() where index < field || index >= field + 4 { sum &+= UInt32(byte) }
        return ~sum
    }
}

/// The 512-byte "hard disk footer" of a VHD image (at the end of every image; copied at the start
/// of dynamic ones), and the rules QEMU applies to its geometry.
public struct VpcFooter: Sendable, Equatable {
    /// Disk types.
    public static let typeFixed: UInt32 = 2
    public static let typeDynamic: UInt32 = 3
    public static let typeDifferencing: UInt32 = 4
    /// The largest CHS geometry, 65535 × 16 × 255 sectors: a footer with it takes its size from
    /// `currentSize`.
    public static let maxGeometry: UInt64 = 65535 * 16 * 255
    /// Largest virtual size in sectors (2040 GiB).
    public static let maxSectors: UInt64 = 0xff00_0000
    /// Seconds from the Unix epoch to 2000-01-01, the VHD timestamp base.
    static let timestampBase = 946_684_800

    /// The raw 512 bytes, kept to be written back unchanged at the new end of a growing image.
    public var bytes: [UInt8]

    /// Wraps 512 footer bytes.
    public init(bytes: [UInt8]) { self.bytes = bytes }

    private func field<T>(_ load: (UnsafeRawBufferPointer, Int) -> T, _ offset: Int) -> T {
        bytes.withUnsafeBytes { load($0, offset) }
    }

    /// True when the footer starts with the `conectix` cookie.
    public var hasCookie: Bool { bytes.count >= 8 && Array(bytes[0..<8]) == Array("conectix".utf8) }
    public var dataOffset: UInt64 { field(VpcBytes.u64, 16) }
    public var creatorApp: [UInt8] { Array(bytes[28..<32]) }
    public var originalSize: UInt64 { field(VpcBytes.u64, 40) }
    public var currentSize: UInt64 { field(VpcBytes.u64, 48) }
    public var cylinders: UInt16 { field(VpcBytes.u16, 56) }
    public var heads: UInt8 { bytes[58] }
    public var sectorsPerTrack: UInt8 { bytes[59] }
    public var diskType: UInt32 { field(VpcBytes.u32, 60) }
    public var checksum: UInt32 { field(VpcBytes.u32, 64) }
    public var uuid: [UInt8] { Array(bytes[68..<84]) }
    /// True when the stored checksum matches the bytes.
    public var checksumValid: Bool { VpcBytes.checksum(bytes, field: 64) == checksum }

    /// The virtual size in sectors, as QEMU derives it: CHS geometry for images made by Virtual PC
    /// and old QEMU, `currentSize` for Hyper-V, disk2vhd, XenServer, `qem2` (force_size) and for
    /// images whose geometry is the maximum.
    public var sectors: UInt64 {
        let chs = UInt64(cylinders) * UInt64(heads) * UInt64(sectorsPerTrack)
        let app = creatorApp
        let sizeApps: [[UInt8]] = [Array("win ".utf8), Array("qem2".utf8), Array("d2v ".utf8), Array("CTXS".utf8), [0x74, 0x61, 0x70, 0]]
        if sizeApps.contains(app) || chs == VpcFooter.maxGeometry { return currentSize / 512 }
        return chs
    }

    /// QEMU's CHS geometry for a number of sectors (the VHD specification's algorithm).
    public static func geometry(sectors requested: UInt64) -> (cylinders: UInt16, heads: UInt8, sectors: UInt8) {
        let total = min(requested, maxGeometry)
        var perTrack: UInt64
        var heads: UInt64
        var cylindersTimesHeads: UInt64
        if total >= 65535 * 16 * 63 {
            perTrack = 255
            heads = 16
            cylindersTimesHeads = total / perTrack
        } else {
            perTrack = 17
            cylindersTimesHeads = total / perTrack
            heads = max((cylindersTimesHeads + 1023) / 1024, 4)
            if cylindersTimesHeads >= heads * 1024 || heads > 16 {
                perTrack = 31
                heads = 16
                cylindersTimesHeads = total / perTrack
            }
            if cylindersTimesHeads >= heads * 1024 {
                perTrack = 63
                heads = 16
                cylindersTimesHeads = total / perTrack
            }
        }
        return (UInt16(truncatingIfNeeded: cylindersTimesHeads / heads), UInt8(heads), UInt8(perTrack))
    }

    /// A new footer as `qemu-img create -f vpc` writes it; `size` is the final virtual size.
    public static func make(size: UInt64, geometry: (cylinders: UInt16, heads: UInt8, sectors: UInt8), dynamic: Bool,
                            forceSize: Bool, now: Int = time(nil)) -> VpcFooter {
        var bytes = [UInt8](repeating: 0, count: 512)
        bytes.replaceSubrange(0..<8, with: Array("conectix".utf8))
        bytes.replaceSubrange(28..<32, with: Array((forceSize ? "qem2" : "qemu").utf8))
        bytes.replaceSubrange(36..<40, with: Array("Wi2k".utf8))
        bytes.replaceSubrange(68..<84, with: FormatOptions.randomUUID())
        bytes.withUnsafeMutableBytes { raw in
            VpcBytes.put(UInt32(2), raw, 8)
            VpcBytes.put(UInt32(0x0001_0000), raw, 12)
            VpcBytes.put(dynamic ? UInt64(512) : UInt64.max, raw, 16)
            VpcBytes.put(UInt32(truncatingIfNeeded: now - timestampBase), raw, 24)
            VpcBytes.put(UInt16(5), raw, 32)
            VpcBytes.put(UInt16(3), raw, 34)
            VpcBytes.put(size, raw, 40)
            VpcBytes.put(size, raw, 48)
            VpcBytes.put(geometry.cylinders, raw, 56)
            raw[58] = geometry.heads
            raw[59] = geometry.sectors
            VpcBytes.put(dynamic ? typeDynamic : typeFixed, raw, 60)
        }
        let sum = VpcBytes.checksum(bytes, field: 64)
        bytes.withUnsafeMutableBytes { VpcBytes.put(sum, $0, 64) }
        return VpcFooter(bytes: bytes)
    }
}

/// The 1024-byte dynamic disk header ("cxsparse") of a dynamic VHD.
public struct VpcDynamicHeader: Sendable, Equatable {
    public var tableOffset: UInt64
    public var maxTableEntries: UInt32
    public var blockSize: UInt32

    /// Parses the header, with QEMU's message for a missing cookie.
    public static func parse(_ bytes: [UInt8]) throws(BlockError) -> VpcDynamicHeader {
        guard bytes.count >= 1024, Array(bytes[0..<8]) == Array("cxsparse".utf8) else {
            throw .invalid("invalid dynamic VHD image")
        }
        return bytes.withUnsafeBytes { raw in
            VpcDynamicHeader(tableOffset: VpcBytes.u64(raw, 16), maxTableEntries: VpcBytes.u32(raw, 28), blockSize: VpcBytes.u32(raw, 32))
        }
    }

    /// The 1024 bytes QEMU writes: the table at 1536, no parent.
    public func bytes() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 1024)
        bytes.replaceSubrange(0..<8, with: Array("cxsparse".utf8))
        bytes.withUnsafeMutableBytes { raw in
            VpcBytes.put(UInt64.max, raw, 8)
            VpcBytes.put(tableOffset, raw, 16)
            VpcBytes.put(UInt32(0x0001_0000), raw, 24)
            VpcBytes.put(maxTableEntries, raw, 28)
            VpcBytes.put(blockSize, raw, 32)
        }
        let sum = VpcBytes.checksum(bytes, field: 36)
        bytes.withUnsafeMutableBytes { VpcBytes.put(sum, $0, 36) }
        return bytes
    }
}
