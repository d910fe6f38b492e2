#if canImport(Glibc)
import Glibc
#endif
import BlockCore

/// The `vdi` format for probing, `blockimg create`, `info` and `check`.
public enum VdiFormat {
    /// The registry entry.
    public static let format = ImageFormat(
        name: "vdi", probe: probe, createOptions: ["static", "preallocation", "nocow", "extent_size_hint"],
        create: create, details: { _ in
            var details = ImageDetails()
            details.clusterSize = UInt64(VdiHeader.blockSize)
            return details
        }, check: check)

    /// 100 for a header with the VDI signature, as QEMU probes.
    static func probe(_ header: [UInt8], _ filename: String) -> Int {
        guard header.count >= 512 else { return 0 }
        return header.withUnsafeBytes { VdiBytes.u32($0, 64) } == VdiHeader.signature ? 100 : 0
    }

    /// Creates a VDI image as `qemu-img create -f vdi` does: header, block map, and for `static=on`
    /// every block (a sparse file of the full size).
    static func create(_ path: String, _ size: UInt64, _ options: [String: String]) throws(BlockError) -> String {
        let isStatic = try FormatOptions.bool(options, "static") ?? false
        var words = "size=\(size) static=\(isStatic ? "on" : "off")"
        words += try FormatOptions.protocolWords(options)
        guard size <= VdiHeader.maxDiskSize else {
            throw .notSupported("Unsupported VDI image size (size is 0x\(VdiHeader.hex(size)), max supported is 0x\(VdiHeader.hex(VdiHeader.maxDiskSize)))")
        }
        var header = VdiHeader(size: size, isStatic: isStatic)
        header.uuidImage = FormatOptions.randomUUID()
        header.uuidLastSnap = FormatOptions.randomUUID()
        var image = header.bytes()
        var map = [UInt8](repeating: 0, count: Int(header.bmapBytes))
        map.withUnsafeMutableBytes { raw in
            for block in 0..<Int(header.blocksInImage) {
                VdiBytes.put(isStatic ? UInt32(block) : VdiHeader.unallocated, raw, block * 4)
            }
        }
        image += map
        let fileLength = isStatic ? UInt64(image.count) + UInt64(header.blocksInImage) * UInt64(header.blockSize) : UInt64(image.count)
        try FormatOptions.writeNewFile(path, image, length: fileLength)
        return words
    }

    /// qemu-img's check of a VDI image: every allocated block used once, and the count in the header.
    static func check(_ file: BlockNode, _ repair: Qcow2RepairMode?) throws(BlockError) -> Qcow2CheckReport {
        guard repair == nil else { throw .notSupported("This image format does not support checks") }
        let header = try VdiHeader.parse(try Qcow2Opener.readBytes(file, at: 0, count: Int(min(file.length, 512))))
        let blocks = Int(header.blocksInImage)
        let raw = try Qcow2Opener.readBytes(file, at: UInt64(header.offsetBmap), count: blocks * 4)
        var report = Qcow2CheckReport()
        var owner = [UInt32](repeating: VdiHeader.unallocated, count: blocks)
        var allocated: UInt32 = 0
        raw.withUnsafeBytes { bytes in
            for block in 0..<blocks {
                let entry = VdiBytes.u32(bytes, block * 4)
                guard entry < VdiHeader.discarded else { continue }
                if entry < header.blocksInImage {
                    allocated += 1
                    if owner[Int(entry)] >= VdiHeader.discarded {
                        owner[Int(entry)] = entry
                    } else {
                        report.messages.append("ERROR: block index \(owner[Int(entry)]) also used by \(entry)")
                        report.corruptions += 1
                    }
                } else {
                    report.messages.append("ERROR: block index \(block) too large, is \(entry)")
                    report.corruptions += 1
                }
            }
        }
        if allocated != header.blocksAllocated {
            report.messages.append("ERROR: allocated blocks mismatch, is \(allocated), should be \(header.blocksAllocated)")
            report.corruptions += 1
        }
        return report
    }
}
