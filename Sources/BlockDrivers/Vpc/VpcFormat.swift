import BlockCore
import JSON

/// The `vpc` format for probing, `blockimg create` and `info` (qemu-img does not check vpc images).
public enum VpcFormat {
    /// The registry entry.
    public static let format = ImageFormat(
        name: "vpc", probe: probe, createOptions: ["subformat", "force_size", "preallocation", "nocow", "extent_size_hint"],
        create: create, details: details)

    /// 100 for a file that starts with the `conectix` cookie (a dynamic image; fixed ones probe as raw, as in QEMU).
    static func probe(_ header: [UInt8], _ filename: String) -> Int {
        header.count >= 8 && Array(header[0..<8]) == Array("conectix".utf8) ? 100 : 0
    }

    /// `cluster-size` of a dynamic image: its block size.
    static func details(_ node: BlockNode) -> ImageDetails {
        var details = ImageDetails()
        if let driver = node.driver as? VpcDriver, !driver.fixed { details.clusterSize = driver.blockSize }
        return details
    }

    /// Creates a VHD image as `qemu-img create -f vpc` does: the size rounded up to a CHS geometry
    /// unless `force_size=on` (or the size is beyond CHS), 2 MiB blocks for dynamic images.
    static func create(_ path: String, _ size: UInt64, _ options: [String: String]) throws(BlockError) -> String {
        var words = "size=\(size)"
        let subformat = options["subformat"]
        if let subformat {
            guard ["dynamic", "fixed"].contains(subformat) else {
                throw .invalid("Parameter 'subformat' does not accept value '\(subformat)'")
            }
            words += " subformat=\(subformat)"
        }
        let forceSize = try FormatOptions.bool(options, "force_size")
        if let forceSize { words += " force_size=\(forceSize ? "on" : "off")" }
        words += try FormatOptions.protocolWords(options)
        let dynamic = subformat != "fixed"
        var geometry = (cylinders: UInt16(65535), heads: UInt8(16), sectors: UInt8(255))
        if forceSize != true {
            let wanted = min(VpcFooter.maxGeometry, size / 512)
            var tries: UInt64 = 0
            geometry = (0, 0, 0)
            while wanted > UInt64(geometry.cylinders) * UInt64(geometry.heads) * UInt64(geometry.sectors) {
                geometry = VpcFooter.geometry(sectors: wanted + tries)
                tries += 1
            }
        }
        let chs = UInt64(geometry.cylinders) * UInt64(geometry.heads) * UInt64(geometry.sectors)
        var total = chs * 512
        if chs == VpcFooter.maxGeometry {
            guard size / 512 <= VpcFooter.maxSectors else { throw .invalid("The image size is too large for file format 'vpc'") }
            total = size
        }
        let footer = VpcFooter.make(size: total, geometry: geometry, dynamic: dynamic, forceSize: forceSize == true)
        if !dynamic {
            try FormatOptions.writeNewFile(path, [(total, footer.bytes)], length: total + 512)
            return words
        }
        let blockSize: UInt64 = 2 << 20
        let entries = (total / 512 + blockSize / 512 - 1) / (blockSize / 512)
        let tableBytes = (entries * 4 + 511) & ~511
        let header = VpcDynamicHeader(tableOffset: 1536, maxTableEntries: UInt32(entries), blockSize: UInt32(blockSize))
        let table = [UInt8](repeating: 0xff, count: Int(tableBytes))
        try FormatOptions.writeNewFile(
            path, [(0, footer.bytes), (512, header.bytes()), (1536, table), (1536 + tableBytes, footer.bytes)],
            length: 1536 + tableBytes + 512)
        return words
    }
}
