import BlockCore

/// The qcow2 bitmaps extension (docs/interop/qcow2.txt § "Bitmaps extension"): the header
/// extension 0x23852875 points at a bitmap directory; each entry names a bitmap and its one-level
/// bitmap table, whose entries point at clusters of bitmap data (or say "all zeroes" / "all ones").
/// The extension counts only while autoclear bit 0 is set.
enum Qcow2Bitmaps {
    /// The extension's payload: how many bitmaps, and where the directory lies.
    struct Extension: Equatable {
        var count: UInt32
        var directorySize: UInt64
        var directoryOffset: UInt64

        /// The 24 bytes of the header extension.
        var bytes: [UInt8] {
            var out = [UInt8](repeating: 0, count: 24)
            out.withUnsafeMutableBytes { raw in
                Qcow2Bytes.put(count, raw, 0)
                Qcow2Bytes.put(directorySize, raw, 8)
                Qcow2Bytes.put(directoryOffset, raw, 16)
            }
            return out
        }
    }

    /// One bitmap directory entry.
    struct Entry: Equatable {
        /// Flag: the bitmap was not stored cleanly (the image is, or was, in use).
        static let inUse: UInt32 = 1 << 0
        /// Flag: the bitmap records writes (enabled).
        static let auto: UInt32 = 1 << 1
        /// Flag: unknown extra data may be ignored.
        static let extraDataCompatible: UInt32 = 1 << 2

        var tableOffset: UInt64
        var tableSize: UInt32
        var flags: UInt32
        var type: UInt8 = 1
        var granularityBits: UInt8
        var name: String
        var extraData: [UInt8] = []

        /// The entry's bytes, padded to a multiple of 8.
        var bytes: [UInt8] {
            let nameBytes = Array(name.utf8)
            var out = [UInt8](repeating: 0, count: 24)
            out.withUnsafeMutableBytes { raw in
                Qcow2Bytes.put(tableOffset, raw, 0)
                Qcow2Bytes.put(tableSize, raw, 8)
                Qcow2Bytes.put(flags, raw, 12)
                raw[16] = type
                raw[17] = granularityBits
                Qcow2Bytes.put(UInt16(nameBytes.count), raw, 18)
                Qcow2Bytes.put(UInt32(extraData.count), raw, 20)
            }
            out += extraData + nameBytes
            out += [UInt8](repeating: 0, count: (8 - out.count % 8) % 8)
            return out
        }
    }

    /// Entries of a bitmap table: bits 9-55 the data cluster's offset; with offset 0, bit 0 set
    /// means "all ones".
    static let tableOffsetMask: UInt64 = 0x00ff_ffff_ffff_fe00
    /// Most bitmaps in one image (QEMU's limit).
    static let maxBitmaps = 65535
    /// Largest directory (QEMU's limit).
    static let maxDirectorySize: UInt64 = 64 << 20
    /// Largest bitmap table, in entries (QEMU's limit).
    static let maxTableSize: UInt32 = 0x800_0000

    /// The extension of a header, when the extension is present and autoclear bit 0 says it is valid.
    static func extensionOf(_ header: Qcow2Header) -> Extension? {
        guard header.hasConsistentBitmaps,
              let data = header.otherExtensions.first(where: { $0.type == Qcow2Header.bitmapsExtension })?.data,
              data.count >= 24 else { return nil }
        return data.withUnsafeBytes { raw in
            Extension(count: Qcow2Bytes.u32(raw, 0), directorySize: Qcow2Bytes.u64(raw, 8), directoryOffset: Qcow2Bytes.u64(raw, 16))
        }
    }

    /// Reads and checks the bitmap directory.
    static func readDirectory(file: BlockNode, header: Qcow2Header, extension ext: Extension) throws(BlockError) -> [Entry] {
        guard ext.count > 0 else { return [] }
        guard ext.count <= maxBitmaps, ext.directorySize <= maxDirectorySize,
              ext.directoryOffset % UInt64(header.clusterSize) == 0 else {
            throw .invalid("the bitmaps extension is damaged (\(ext.count) bitmaps, directory \(ext.directoryOffset)+\(ext.directorySize))")
        }
        let bytes = try Qcow2Opener.readBytes(file, at: ext.directoryOffset, count: Int(ext.directorySize))
        var entries: [Entry] = []
        var position = 0
        try bytes.withBytes { (raw) throws(BlockError) in
            for _ in 0..<ext.count {
                guard position + 24 <= raw.count else { throw .invalid("the bitmap directory is truncated") }
                let nameSize = Int(Qcow2Bytes.u16(raw, position + 18))
                let extraSize = Int(Qcow2Bytes.u32(raw, position + 20))
                let end = position + 24 + extraSize + nameSize
                guard extraSize <= 1 << 20, nameSize > 0, nameSize <= 1023, end <= raw.count else {
                    throw .invalid("bitmap directory entry \(entries.count) is damaged")
                }
                let entry = Entry(
                    tableOffset: Qcow2Bytes.u64(raw, position), tableSize: Qcow2Bytes.u32(raw, position + 8),
                    flags: Qcow2Bytes.u32(raw, position + 12), type: raw[position + 16], granularityBits: raw[position + 17],
                    name: String(decoding: raw[(position + 24 + extraSize)..<end], as: UTF8.self),
                    extraData: Array(raw[(position + 24)..<(position + 24 + extraSize)]))
                guard entry.type == 1, (9...31).contains(entry.granularityBits),
                      entry.tableOffset % UInt64(header.clusterSize) == 0, entry.tableSize <= maxTableSize else {
                    throw .invalid("bitmap '\(entry.name)' has an invalid directory entry")
                }
                entries.append(entry)
                position = (end + 7) / 8 * 8
            }
        }
        return entries
    }

    /// The table entries a bitmap of `granularityBits` over `size` bytes needs.
    static func tableSize(size: UInt64, granularityBits: UInt8, clusterSize: Int) -> UInt32 {
        let bits = size == 0 ? 0 : ((size - 1) >> UInt64(granularityBits)) + 1
        let bitsPerCluster = UInt64(clusterSize) * 8
        return UInt32((bits + bitsPerCluster - 1) / bitsPerCluster)
    }

    /// Reads a bitmap's table.
    static func readTable(file: BlockNode, entry: Entry) throws(BlockError) -> [UInt64] {
        Qcow2Bytes.words(try Qcow2Opener.readBytes(file, at: entry.tableOffset, count: Int(entry.tableSize) * 8))
    }

    /// Loads a bitmap's bits from the image.
    static func load(file: BlockNode, header: Qcow2Header, entry: Entry, size: UInt64) throws(BlockError) -> DirtyBitmap {
        let clusterSize = header.clusterSize
        guard entry.tableSize == tableSize(size: size, granularityBits: entry.granularityBits, clusterSize: clusterSize) else {
            throw .invalid("bitmap '\(entry.name)' has a table of \(entry.tableSize) entries, which does not fit the image size")
        }
        let bitmap = DirtyBitmap(name: entry.name, granularity: 1 << UInt64(entry.granularityBits), size: size)
        let ones = [UInt8](repeating: 0xff, count: clusterSize)
        for (index, word) in try readTable(file: file, entry: entry).enumerated() {
            let offset = word & tableOffsetMask
            if offset == 0 {
                if word & 1 != 0 { ones.withUnsafeBytes { bitmap.deserialize($0, atByte: index * clusterSize) } }
                continue
            }
            let data = try Qcow2Opener.readBytes(file, at: offset, count: clusterSize)
            data.withUnsafeBytes { bitmap.deserialize($0, atByte: index * clusterSize) }
        }
        return bitmap
    }

    /// The clusters the bitmaps extension uses (directory, tables, data), for the refcount check.
    static func references(file: BlockNode, header: Qcow2Header) throws(BlockError) -> [(offset: UInt64, length: UInt64, what: String)] {
        guard let ext = extensionOf(header), ext.count > 0 else { return [] }
        var found: [(offset: UInt64, length: UInt64, what: String)] = [(ext.directoryOffset, ext.directorySize, "bitmap directory")]
        for entry in try readDirectory(file: file, header: header, extension: ext) {
            found.append((entry.tableOffset, UInt64(entry.tableSize) * 8, "bitmap table"))
            for word in try readTable(file: file, entry: entry) where word & tableOffsetMask != 0 {
                found.append((word & tableOffsetMask, UInt64(header.clusterSize), "bitmap data"))
            }
        }
        return found
    }
}

/// A persistent bitmap as `qemu-img info` lists it (format-specific `bitmaps`).
public struct Qcow2BitmapSummary: Sendable, Equatable {
    /// The bitmap's name.
    public var name: String
    /// Bytes per bit.
    public var granularity: UInt64
    /// QEMU's flag names: "in-use" (not stored cleanly), "auto" (recording).
    public var flags: [String]

    /// The bitmaps of an image, in directory order; empty when it has none (or the extension is
    /// not valid).
    public static func list(file: BlockNode, header: Qcow2Header) throws(BlockError) -> [Qcow2BitmapSummary] {
        guard let ext = Qcow2Bitmaps.extensionOf(header) else { return [] }
        return try Qcow2Bitmaps.readDirectory(file: file, header: header, extension: ext).map { entry in
            var flags: [String] = []
            if entry.flags & Qcow2Bitmaps.Entry.inUse != 0 { flags.append("in-use") }
            if entry.flags & Qcow2Bitmaps.Entry.auto != 0 { flags.append("auto") }
            return Qcow2BitmapSummary(name: entry.name, granularity: 1 << UInt64(entry.granularityBits), flags: flags)
        }
    }
}
