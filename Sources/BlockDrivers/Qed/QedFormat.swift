#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import JSON

/// qed as probing, `blockimg create`, `info` and `check` see it.
public enum QedFormat {
    /// The registry entry.
    public static let format = ImageFormat(
        name: "qed", probe: probe, createOptions: ["backing_file", "backing_fmt", "cluster_size", "table_size"],
        create: create, details: details, check: { file, repair throws(BlockError) in try QedCheck.run(file: file, repair: repair) })

    /// QEMU's qed probe: the magic scores 100.
    static func probe(_ header: [UInt8], _ filename: String) -> Int {
        header.count >= 4 && Array(header[0..<4]) == [0x51, 0x45, 0x44, 0x00] ? 100 : 0
    }

    static func details(_ node: BlockNode) -> ImageDetails {
        var details = ImageDetails()
        guard let driver = node.driver as? QedDriver else { return details }
        let header = driver.header
        details.clusterSize = UInt64(header.clusterSize)
        details.backingFile = header.backingFile
        details.backingFormat = header.backingFormat
        // qemu-img shows dirty-flag false for qed whatever QED_F_NEED_CHECK says.
        details.dirty = false
        return details
    }

    /// Writes a new qed image: the header (and backing name) in the first cluster, an empty L1 table after it.
    static func create(_ path: String, _ size: UInt64, _ options: [String: String]) throws(BlockError) -> String {
        var header = QedHeader()
        var words = ["size=\(size)"]
        if let backing = options["backing_file"] {
            words.append("backing_file=\(backing)")
            if let format = options["backing_fmt"] { words.append("backing_fmt=\(format)") }
        }
        let clusterSize = try sizeOption(options, "cluster_size") ?? 65536
        words.append("cluster_size=\(clusterSize)")
        let tableSize = try sizeOption(options, "table_size")
        if let tableSize { words.append("table_size=\(tableSize)") }
        guard QedHeader.validClusterSize(clusterSize) else {
            throw .invalid("QED cluster size must be within range [4096, 67108864] and power of 2")
        }
        guard QedHeader.validTableSize(tableSize ?? 4) else {
            throw .invalid("QED table size must be within range [1, 16] and power of 2")
        }
        header.clusterSize = UInt32(clusterSize)
        header.tableSize = UInt32(tableSize ?? 4)
        header.imageSize = size
        guard size <= header.maxImageSize else {
            throw .invalid("QED image size must be a non-zero multiple of cluster size and less than \(header.maxImageSize) bytes")
        }
        header.l1TableOffset = clusterSize
        if let backing = options["backing_file"], !backing.isEmpty {
            header.features |= QedHeader.backingFileFeature
            if options["backing_fmt"] == "raw" { header.features |= QedHeader.noProbeFeature }
            header.backingFile = backing
            header.backingNameOffset = UInt32(QedHeader.length)
            header.backingNameSize = UInt32(backing.utf8.count)
            guard QedHeader.length + backing.utf8.count <= Int(clusterSize) else {
                throw .invalid("the backing file name does not fit in the qed header")
            }
        }
        try writeNewFile(path, header.serializedWithName(), length: header.l1TableOffset + UInt64(header.tableBytes))
        return words.joined(separator: " ")
    }

    static func sizeOption(_ options: [String: String], _ key: String) throws(BlockError) -> UInt64? {
        guard let text = options[key] else { return nil }
        guard let value = ImageSizes.parse(text) else { throw .invalid("Parameter '\(key)' expects a size") }
        return value
    }

    /// Creates (or truncates) the file at `path` with `bytes` at its start and `length` bytes in all;
    /// removes it again on failure.
    static func writeNewFile(_ path: String, _ bytes: [UInt8], length: UInt64) throws(BlockError) {
        let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .posix("Could not create '\(path)'") }
        defer { Glibc.close(fd) }
        let written = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        guard written == bytes.count, ftruncate(fd, off_t(length)) == 0, fsync(fd) == 0 else {
            let error = BlockError.posix("Could not write '\(path)'")
            unlink(path)
            throw error
        }
    }
}

/// Size strings with qemu-img's suffixes (k, M, G, T, P, E; plain numbers are bytes).
enum ImageSizes {
    /// The value of `text`, or nil when it is not a size.
    static func parse(_ text: String) -> UInt64? {
        var digits = text
        var shift: UInt64 = 0
        if let last = text.last, !last.isNumber {
            let suffixes = Array("kmgtpe")
            guard let index = suffixes.firstIndex(of: Character(last.lowercased())) else { return nil }
            shift = 10 * UInt64(index + 1)
            digits = String(text.dropLast())
        }
        guard let value = UInt64(digits), shift < 64, value <= UInt64.max >> shift else { return nil }
        return value << shift
    }
}
