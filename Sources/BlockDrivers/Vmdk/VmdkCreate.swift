#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock

/// Creates vmdk images the way `qemu-img create -f vmdk` lays them out: the descriptor, and one
/// sparse or flat extent file per 2 GiB for the split subformats.
public enum VmdkCreate {
    /// The `-o` options (besides `size`), in qemu-img's order.
    public static let optionNames = [
        "adapter_type", "backing_file", "backing_fmt", "compat6", "hwversion", "toolsversion", "subformat", "zeroed_grain",
    ]
    static let subformats = ["monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat", "streamOptimized"]
    static let adapterTypes = ["ide", "buslogic", "lsilogic", "legacyESX"]
    /// The size of each extent of the split subformats.
    static let splitSize: UInt64 = 0x8000_0000

    /// Writes a new image; returns the "Formatting ..." words after `fmt=vmdk`.
    public static func create(_ path: String, _ size: UInt64, _ options: [String: String]) throws(BlockError) -> String {
        var words = ["size=\(size)"]
        for key in ["adapter_type", "backing_file", "backing_fmt"] { if let value = options[key] { words.append("\(key)=\(value)") } }
        words.append("compat6=\(options["compat6"] ?? "off")")
        words.append("hwversion=\(options["hwversion"] ?? "undefined")")
        for key in ["toolsversion", "subformat", "zeroed_grain"] { if let value = options[key] { words.append("\(key)=\(value)") } }

        if let format = options["backing_fmt"], format != "vmdk" { throw .invalid("backing_file must be a vmdk image") }
        let adapter = options["adapter_type"] ?? "ide"
        guard adapterTypes.contains(adapter) else { throw .invalid("invalid parameter value: \(adapter)") }
        let subformat = options["subformat"] ?? "monolithicSparse"
        guard subformats.contains(subformat) else { throw .invalid("invalid parameter value: \(subformat)") }
        let compat6 = try bool(options["compat6"], "compat6")
        let zeroedGrain = try bool(options["zeroed_grain"], "zeroed_grain")
        var hardware = options["hwversion"].flatMap { $0 == "undefined" ? nil : $0 }
        if compat6 {
            if hardware != nil { throw .invalid("compat6 cannot be enabled with hwversion set") }
            hardware = "6"
        }
        let split = subformat.hasPrefix("twoGbMaxExtent")
        let flat = subformat.hasSuffix("Flat")
        let compress = subformat == "streamOptimized"
        let backing = options["backing_file"]
        if flat && backing != nil { throw .notSupported("Flat image can't have backing file") }
        if flat && zeroedGrain { throw .notSupported("Flat image can't enable zeroed grain") }
        var parentCID: UInt32 = 0xffff_ffff
        if let backing { parentCID = try backingCID(backing, of: path) }

        let slash = path.lastIndex(of: "/")
        let directory = slash.map { String(path[...$0]) } ?? ""
        let base = slash.map { String(path[path.index(after: $0)...]) } ?? path
        let dot = base.lastIndex(of: ".")
        let prefix = dot.map { String(base[..<$0]) } ?? base
        let postfix = dot.map { String(base[$0...]) } ?? ""

        var created: [String] = []
        do throws(BlockError) {
            var lines: [VmdkExtentLine] = []
            if !split && !flat {
                lines.append(VmdkExtentLine(type: "SPARSE", sectors: (size + 511) / 512, fileName: base))
            } else {
                var done: UInt64 = 0
                var index = 1
                while done < size {
                    let extentSize = split ? min(size - done, splitSize) : size - done
                    let name = split ? prefix + "-" + (flat ? "f" : "s") + threeDigits(index) + postfix : prefix + "-flat" + postfix
                    created.append(directory + name)
                    try writeExtent(directory + name, size: extentSize, flat: flat, compress: false, zeroedGrain: zeroedGrain)
                    lines.append(VmdkExtentLine(type: flat ? "FLAT" : "SPARSE", sectors: (extentSize + 511) / 512, fileName: name))
                    done += extentSize
                    index += 1
                }
            }
            let descriptor = VmdkDescriptor(
                cid: UInt32.random(in: 0...UInt32.max), parentCID: parentCID, createType: subformat, parentFileNameHint: backing,
                extents: lines)
            let text = Array(descriptor.rendered(
                hardwareVersion: hardware ?? "4", adapterType: adapter, toolsVersion: options["toolsversion"] ?? "2147483647",
                size: size).utf8)
            created.append(path)
            if !split && !flat {
                guard text.count <= 20 * 512 else { throw .invalid("the descriptor does not fit in its 20 sectors") }
                try writeExtent(path, size: size, flat: false, compress: compress, zeroedGrain: zeroedGrain, descriptor: text)
            } else {
                try writeFile(path, [(0, text)], length: UInt64(text.count))
            }
        } catch {
            for file in created { unlink(file) }
            throw error
        }
        return words.joined(separator: " ")
    }

    private static func threeDigits(_ value: Int) -> String {
        let digits = String(value)
        return String(repeating: "0", count: max(0, 3 - digits.count)) + digits
    }

    private static func bool(_ value: String?, _ name: String) throws(BlockError) -> Bool {
        switch value {
        case nil, "off", "false": return false
        case "on", "true": return true
        default: throw .invalid("Parameter '\(name)' expects 'on' or 'off'")
        }
    }

    /// The CID of the backing image, which must be a vmdk image.
    private static func backingCID(_ name: String, of path: String) throws(BlockError) -> UInt32 {
        var resolved = name
        if !name.hasPrefix("/") {
            let directory = PathName.directory(of: path)
            if !directory.isEmpty { resolved = directory + "/" + name }
        }
        let fd = Glibc.open(resolved, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .posix("Could not open '\(resolved)'") }
        var header = [UInt8](repeating: 0, count: ImageFormats.probeLength)
        let count = header.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        Glibc.close(fd)
        let format = ImageFormats.probe(header: Array(header[0..<max(count, 0)]), filename: resolved)
        guard format == "vmdk" else { throw .invalid("Invalid backing file format: \(format). Must be vmdk") }
        let graph = BlockGraph(drivers: Drivers.all)
        defer { graph.closeAll() }
        do {
            let node = try graph.open(.object([
                "driver": .string("vmdk"), "read-only": .bool(true), "backing": .null,
                "file": .object(["driver": .string("file"), "filename": .string(resolved), "read-only": .bool(true)]),
            ]), context: resolved)
            guard let driver = node.driver as? VmdkDriver else { throw BlockError.invalid("Failed to read parent CID") }
            return driver.currentCID
        } catch {
            throw .invalid("Could not open '\(resolved)': \(error)")
        }
    }

    /// Writes one extent file: flat (a file of `size` bytes) or sparse (header, descriptor, both grain
    /// directories with their grain tables, up to the first grain).
    static func writeExtent(_ path: String, size: UInt64, flat: Bool, compress: Bool, zeroedGrain: Bool, descriptor: [UInt8] = []) throws(BlockError) {
        if flat { return try writeFile(path, [], length: size) }
        let layout = sparseLayout(capacity: size / 512, compress: compress, zeroedGrain: zeroedGrain)
        let header = layout.header
        let entries = Int(layout.tables)
        var rgd = [UInt8](repeating: 0, count: Int(layout.directorySectors * 512))
        var gd = rgd
        for index in 0..<entries {
            let offset = UInt64(index) * layout.tableSectors
            VmdkBytes.put(UInt32(header.rgdOffset + layout.directorySectors + offset), &rgd, index * 4)
            VmdkBytes.put(UInt32(header.gdOffset + layout.directorySectors + offset), &gd, index * 4)
        }
        var pieces: [(UInt64, [UInt8])] = [(0, header.serialized()), (header.rgdOffset * 512, rgd), (header.gdOffset * 512, gd)]
        if !descriptor.isEmpty { pieces.append((512, descriptor)) }
        try writeFile(path, pieces, length: header.grainOffset * 512)
    }

    /// The header and table sizes QEMU gives a new sparse extent of `capacity` sectors (64 KiB grains,
    /// 512 entries per table; descriptor at sector 1, 20 sectors long; redundant directory first).
    static func sparseLayout(capacity: UInt64, compress: Bool, zeroedGrain: Bool)
        -> (header: VmdkSparseHeader, tables: UInt64, tableSectors: UInt64, directorySectors: UInt64) {
        let grainSectors: UInt64 = 128
        let gtes: UInt64 = 512
        let grains = (capacity + grainSectors - 1) / grainSectors
        let tableSectors = (gtes * 4 + 511) / 512
        let tables = (grains + gtes - 1) / gtes
        let directorySectors = (tables * 4 + 511) / 512
        let rgdOffset: UInt64 = 21
        let gdOffset = rgdOffset + directorySectors + tableSectors * tables
        let grainOffset = (gdOffset + directorySectors + tableSectors * tables + grainSectors - 1) / grainSectors * grainSectors
        var flags = VmdkSparseHeader.flagRedundantGD | VmdkSparseHeader.flagNewlineDetect
        if compress { flags |= VmdkSparseHeader.flagCompressed | VmdkSparseHeader.flagMarkers }
        if zeroedGrain { flags |= VmdkSparseHeader.flagZeroGrain }
        let header = VmdkSparseHeader(
            version: compress ? 3 : zeroedGrain ? 2 : 1, flags: flags, capacity: capacity, grainSectors: grainSectors,
            descriptorOffset: 1, descriptorSize: 20, gtesPerGT: UInt32(gtes), rgdOffset: rgdOffset, gdOffset: gdOffset,
            grainOffset: grainOffset, compressAlgorithm: compress ? 1 : 0)
        return (header, tables, tableSectors, directorySectors)
    }

    /// Creates (or truncates) `path` with `pieces` written at their offsets and `length` bytes in all.
    static func writeFile(_ path: String, _ pieces: [(UInt64, [UInt8])], length: UInt64) throws(BlockError) {
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .posix("Could not create '\(path)'") }
        defer { Glibc.close(fd) }
        guard ftruncate(fd, off_t(length)) == 0 else { throw .posix("Could not resize '\(path)'") }
        for (offset, bytes) in pieces {
            let written = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
            guard written == bytes.count else { throw .posix("Could not write '\(path)'") }
        }
        guard fsync(fd) == 0 else { throw .posix("Could not write '\(path)'") }
    }
}
