import BlockCore

/// qcow (version 1) as probing, `blockimg create` and `info` see it.
public enum QcowFormat {
    /// The registry entry (qemu-img does not check qcow images).
    public static let format = ImageFormat(
        name: "qcow", probe: probe, createOptions: ["backing_file", "backing_fmt", "encryption", "encrypt.format", "encrypt.key-secret"],
        create: create, details: details)

    /// QEMU's qcow probe: the magic and version 1 score 100.
    static func probe(_ header: [UInt8], _ filename: String) -> Int {
        guard header.count >= 8 else { return 0 }
        return Array(header[0..<8]) == [0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 1] ? 100 : 0
    }

    static func details(_ node: BlockNode) -> ImageDetails {
        var details = ImageDetails()
        guard let driver = node.driver as? QcowDriver else { return details }
        details.clusterSize = UInt64(driver.header.clusterSize)
        details.backingFile = driver.header.backingFile
        return details
    }

    /// Writes a new qcow image as QEMU lays it out: the header and backing name, then an L1 table
    /// padded to whole sectors. With a backing file, clusters are 512 bytes (so that no write needs
    /// copy-on-write) and L2 tables 4096 entries; without, 4 KiB clusters and 512-entry tables.
    static func create(_ path: String, _ size: UInt64, _ options: [String: String]) throws(BlockError) -> String {
        var words = ["size=\(size)"]
        let backing = options["backing_file"].flatMap { $0.isEmpty ? nil : $0 }
        if let backing {
            words.append("backing_file=\(backing)")
            if let format = options["backing_fmt"] { words.append("backing_fmt=\(format)") }
        }
        if let encryption = options["encryption"], encryption != "off" {
            throw .notSupported("qcow: AES-encrypted images are not supported (the cipher is broken; QEMU only keeps it for old images)")
        }
        if options["encrypt.format"] != nil {
            throw .notSupported("qcow: AES-encrypted images are not supported (the cipher is broken; QEMU only keeps it for old images)")
        }
        var header = QcowHeader()
        header.size = size
        if let backing {
            header.backingFile = backing
            header.backingFileOffset = UInt64(QcowHeader.length)
            header.backingFileSize = UInt32(backing.utf8.count)
            guard backing.utf8.count <= 1023 else { throw .invalid("Backing file name too long") }
            header.clusterBits = 9
            header.l2Bits = 12
        }
        let headerLength = UInt64(QcowHeader.length + (backing?.utf8.count ?? 0))
        header.l1TableOffset = (headerLength + 7) & ~7
        let l1Bytes = (header.l1Entries * 8 + 511) & ~511
        guard header.l1Entries * 8 <= QcowOpener.maxL1Bytes else { throw .invalid("Image too large") }
        try QedFormat.writeNewFile(path, header.serialized(), length: header.l1TableOffset + l1Bytes)
        return words.joined(separator: " ")
    }
}
