#if canImport(Glibc)
import Glibc
#endif
import BlockCore

/// The 512-byte header of a Bochs growing ("redolog") image.
struct BochsHeader: Sendable, Equatable {
    /// The header's magic, type and subtype strings.
    static let magic = "Bochs Virtual HD Image"
    static let type = "Redolog"
    static let subtype = "Growing"
    /// The two header versions QEMU reads.
    static let version1: UInt32 = 0x0001_0000
    static let version2: UInt32 = 0x0002_0000
    /// Largest catalog and extent QEMU accepts (8 MiB each).
    static let maxCatalogEntries: UInt32 = 0x80_0000 / 4
    static let maxExtentSize: UInt32 = 0x80_0000

    var version: UInt32
    /// Size of the header, where the catalog starts.
    var headerSize: UInt32
    /// Entries of the catalog (one per extent of the disk).
    var catalogEntries: UInt32
    /// Bytes of each extent's bitmap.
    var bitmapSize: UInt32
    /// Bytes of guest data in each extent.
    var extentSize: UInt32
    /// Virtual disk size in bytes.
    var diskSize: UInt64

    /// True when these first bytes are a Bochs growing image of a version QEMU reads.
    static func matches(_ bytes: [UInt8]) -> Bool {
        guard bytes.count >= 72 else { return false }
        let version = ReadOnlyImage.le32(bytes, 64)
        return ReadOnlyImage.cString(bytes, 0, 32) == magic && ReadOnlyImage.cString(bytes, 32, 16) == type
            && ReadOnlyImage.cString(bytes, 48, 16) == subtype && (version == version1 || version == version2)
    }

    /// Parses and checks a header as QEMU's bochs driver does (same refusals).
    static func parse(_ bytes: [UInt8]) throws(BlockError) -> BochsHeader {
        guard bytes.count >= 512, matches(bytes) else { throw .invalid("Image not in Bochs format") }
        let version = ReadOnlyImage.le32(bytes, 64)
        let header = BochsHeader(
            version: version,
            headerSize: ReadOnlyImage.le32(bytes, 68),
            catalogEntries: ReadOnlyImage.le32(bytes, 72),
            bitmapSize: ReadOnlyImage.le32(bytes, 76),
            extentSize: ReadOnlyImage.le32(bytes, 80),
            diskSize: version == version1 ? ReadOnlyImage.le64(bytes, 84) : ReadOnlyImage.le64(bytes, 88))
        guard header.catalogEntries <= maxCatalogEntries else {
            throw BlockError(errno: EFBIG, "Catalog size is too large")
        }
        guard header.bitmapSize > 0, header.bitmapSize <= maxExtentSize else {
            throw .invalid("Bitmap size \(header.bitmapSize) is invalid")
        }
        guard header.extentSize >= 512 else { throw .invalid("Extent size must be at least 512") }
        guard header.extentSize <= maxExtentSize else { throw .invalid("Extent size \(header.extentSize) is too large") }
        let sectors = header.diskSize / 512
        let perExtent = UInt64(header.extentSize / 512)
        guard UInt64(header.catalogEntries) >= (sectors + perExtent - 1) / perExtent else {
            throw .invalid("Catalog size is too small for this disk size")
        }
        return header
    }

    /// Sectors of each extent's bitmap and data area, as QEMU rounds them.
    var bitmapSectors: UInt64 { 1 + (UInt64(bitmapSize) - 1) / 512 }
    var extentSectors: UInt64 { 1 + (UInt64(extentSize) - 1) / 512 }
    /// Where the extents start: after the header and catalog.
    var dataOffset: UInt64 { UInt64(headerSize) + UInt64(catalogEntries) * 4 }
}
