import BlockCore

/// The header of a qcow (version 1) image: 48 bytes, big-endian, then the backing file name.
public struct QcowHeader: Sendable, Equatable {
    /// "QFI\xfb".
    public static let magic: UInt32 = 0x5146_49fb
    /// The size of the fixed header.
    public static let length = 48
    /// Bit 63 of an L2 entry: the cluster is compressed.
    public static let compressedFlag: UInt64 = 1 << 63

    public var backingFileOffset: UInt64 = 0
    public var backingFileSize: UInt32 = 0
    public var mtime: UInt32 = 0
    public var size: UInt64 = 0
    public var clusterBits: UInt8 = 12
    public var l2Bits: UInt8 = 9
    public var cryptMethod: UInt32 = 0
    public var l1TableOffset: UInt64 = 0
    /// The backing file name, nil when there is none.
    public var backingFile: String?

    /// An empty header.
    public init() {}

    /// Bytes in a cluster.
    public var clusterSize: Int { 1 << Int(clusterBits) }
    /// Entries in an L2 table.
    public var l2Entries: Int { 1 << Int(l2Bits) }
    /// Entries in the L1 table: enough to cover the image size.
    public var l1Entries: UInt64 {
        let shift = UInt64(clusterBits) + UInt64(l2Bits)
        return (size + (1 << shift) - 1) >> shift
    }

    /// Parses and validates a header; `bytes` holds at least the fixed part.
    public static func parse(_ bytes: [UInt8], fileLength: UInt64) throws(BlockError) -> QcowHeader {
        guard bytes.count >= length else { throw .invalid("image is too short to be qcow") }
        var header = QcowHeader()
        let (magic, version) = bytes.withUnsafeBytes { raw -> (UInt32, UInt32) in
            header.backingFileOffset = Qcow2Bytes.u64(raw, 8)
            header.backingFileSize = Qcow2Bytes.u32(raw, 16)
            header.mtime = Qcow2Bytes.u32(raw, 20)
            header.size = Qcow2Bytes.u64(raw, 24)
            header.clusterBits = raw[32]
            header.l2Bits = raw[33]
            header.cryptMethod = Qcow2Bytes.u32(raw, 36)
            header.l1TableOffset = Qcow2Bytes.u64(raw, 40)
            return (Qcow2Bytes.u32(raw, 0), Qcow2Bytes.u32(raw, 4))
        }
        guard magic == QcowHeader.magic else { throw .invalid("image is not in qcow format") }
        guard version == 1 else { throw .notSupported("Unsupported qcow version \(version)") }
        guard header.size <= 1 << 54 else { throw .invalid("Image size is too large (max \(1 << 54) bytes)") }
        guard (9...16).contains(header.clusterBits) else { throw .invalid("Cluster size must be between 512 and 64k") }
        guard (6...13).contains(header.l2Bits) else { throw .invalid("L2 table size must be between 512 and 64k") }
        guard header.cryptMethod <= 1 else { throw .invalid("invalid encryption method in qcow header") }
        guard header.cryptMethod == 0 else {
            throw .notSupported("qcow: AES-encrypted images are not supported; decrypt them with qemu-img convert first")
        }
        let l1Bytes = header.l1Entries * 8
        guard header.l1TableOffset <= fileLength, l1Bytes <= fileLength - header.l1TableOffset else {
            throw .invalid("qcow: the L1 table at \(header.l1TableOffset) lies past the end of the file (\(fileLength) bytes)")
        }
        if header.backingFileOffset != 0 {
            guard header.backingFileSize <= 1023 else { throw .invalid("Backing file name too long") }
            let start = header.backingFileOffset
            let count = UInt64(header.backingFileSize)
            guard start <= UInt64(bytes.count), count <= UInt64(bytes.count) - start else {
                throw .invalid("qcow: the backing file name lies past the end of the file")
            }
            header.backingFile = String(decoding: bytes[Int(start)..<Int(start + count)], as: UTF8.self)
        }
        return header
    }

    /// The fixed header followed by the backing file name.
    public func serialized() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: QcowHeader.length)
        bytes.withUnsafeMutableBytes { raw in
            Qcow2Bytes.put(QcowHeader.magic, raw, 0)
            Qcow2Bytes.put(UInt32(1), raw, 4)
            Qcow2Bytes.put(backingFileOffset, raw, 8)
            Qcow2Bytes.put(backingFileSize, raw, 16)
            Qcow2Bytes.put(mtime, raw, 20)
            Qcow2Bytes.put(size, raw, 24)
            raw[32] = clusterBits
            raw[33] = l2Bits
            Qcow2Bytes.put(cryptMethod, raw, 36)
            Qcow2Bytes.put(l1TableOffset, raw, 40)
        }
        if let backingFile { bytes += Array(backingFile.utf8) }
        return bytes
    }

    /// Reads and parses the header of the image in `file`.
    public static func read(_ file: BlockNode) throws(BlockError) -> QcowHeader {
        let first = try ImageBacking.readBytes(file, at: 0, count: Int(min(file.length, UInt64(length))), what: "the qcow header")
        guard first.count >= length else { throw .invalid("image is too short to be qcow") }
        let (nameOffset, nameSize) = first.withUnsafeBytes { (Qcow2Bytes.u64($0, 8), Qcow2Bytes.u32($0, 16)) }
        var bytes = first
        if nameOffset != 0, nameSize <= 1023, nameOffset <= 1 << 20 {
            let end = min(nameOffset + UInt64(nameSize), file.length)
            bytes = try ImageBacking.readBytes(file, at: 0, count: Int(max(end, UInt64(length))), what: "the qcow header")
        }
        return try parse(bytes, fileLength: file.length)
    }
}
