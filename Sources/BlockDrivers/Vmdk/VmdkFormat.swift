#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock
import JSON

/// The vmdk entry of `ImageFormats`: probing, creation, `info` details and `check`.
public enum VmdkFormat {
    /// The registry entry.
    public static let format = ImageFormat(
        name: "vmdk", probe: probe, createOptions: VmdkCreate.optionNames, create: VmdkCreate.create, details: details, check: check)

    /// QEMU's vmdk probe: a sparse magic (`KDMV`, `COWD`), or descriptor text whose first line that is
    /// not a comment or spaces is `version=1`, `2` or `3`.
    public static func probe(_ header: [UInt8], _ filename: String) -> Int {
        guard header.count >= 4 else { return 0 }
        let magic = Array(header[0..<4])
        if magic == VmdkSparseHeader.magic || magic == VmdkSparseHeader.cowdMagic { return 100 }
        var index = 0
        let end = header.count
        while index < end {
            if header[index] == UInt8(ascii: "#") {
                while index < end && header[index] != UInt8(ascii: "\n") { index += 1 }
                index += 1
                continue
            }
            if header[index] == UInt8(ascii: " ") {
                while index < end && header[index] == UInt8(ascii: " ") { index += 1 }
                if index < end && header[index] == UInt8(ascii: "\r") { index += 1 }
                guard index < end, header[index] == UInt8(ascii: "\n") else { return 0 }
                index += 1
                continue
            }
            for version in ["1", "2", "3"] {
                for ending in ["\n", "\r\n"] {
                    let line = Array("version=\(version)\(ending)".utf8)
                    if end - index >= line.count && Array(header[index..<index + line.count]) == line { return 100 }
                }
            }
            return 0
        }
        return 0
    }

    /// What `qemu-img info` shows of a vmdk image: cluster size, backing file, and the CIDs, create
    /// type and extents under `format-specific`.
    public static func details(_ node: BlockNode) -> ImageDetails {
        var details = ImageDetails()
        guard let driver = node.driver as? VmdkDriver else { return details }
        let first = driver.extents[0]
        let uniform = driver.extents.allSatisfy { extent in
            extent.isFlat == first.isFlat && extent.compressed == first.compressed && (extent.isFlat || extent.grainSize == first.grainSize)
        }
        if uniform, !first.isFlat { details.clusterSize = first.grainSize }
        if let hint = driver.descriptor.parentFileNameHint {
            details.backingFile = hint
            details.backingFormat = "vmdk"
        }
        let extents: [JSONValue] = driver.extents.map { extent in
            var info: [String: JSONValue] = [
                "virtual-size": .integer(Int64(extent.length)),
                "filename": .string(extent.file?.driver.filename ?? ""),
                "format": .string(extent.typeName),
            ]
            if case .sparse = extent.kind { info["cluster-size"] = .integer(Int64(extent.grainSize)) }
            if extent.compressed { info["compressed"] = .bool(true) }
            return .object(info)
        }
        details.specific = .object([
            "type": .string("vmdk"),
            "data": .object([
                "cid": .integer(Int64(driver.currentCID)),
                "parent-cid": .integer(Int64(driver.descriptor.parentCID)),
                "create-type": .string(driver.createType),
                "extents": .array(extents),
            ]),
        ])
        return details
    }

    /// `qemu-img check` of a vmdk image: every grain's entry is looked up; an entry that cannot be
    /// read or a grain past the end of its file stops the check with QEMU's message and failure.
    public static func check(_ file: BlockNode, _ repair: Qcow2RepairMode?) throws(BlockError) -> Qcow2CheckReport {
        if repair != nil { throw .notSupported("Operation not supported") }
        let graph = BlockGraph(drivers: Drivers.all)
        defer { graph.closeAll() }
        let node: BlockNode
        do {
            node = try graph.open(.object([
                "driver": .string("vmdk"), "read-only": .bool(true), "backing": .null,
                "file": .object(["driver": .string("file"), "filename": .string(file.driver.filename), "read-only": .bool(true)]),
            ]), context: file.driver.filename)
        } catch {
            throw .invalid(error.message)
        }
        guard let driver = node.driver as? VmdkDriver else { return Qcow2CheckReport() }
        for extent in driver.extents {
            guard case .sparse = extent.kind, let extentFile = extent.file else { continue }
            let grains = (extent.length + extent.grainSize - 1) / extent.grainSize
            for index in 0..<grains {
                let sector = (extent.start + index * extent.grainSize) / 512
                let state: VmdkGrain
                do {
                    state = try driver.lookup(extent, grain: index)
                } catch {
                    // QEMU stops here and fails the check with its internal error code (-1, EPERM).
                    printError("ERROR: could not get cluster_offset for sector \(sector)")
                    throw BlockError(errno: EPERM, "Operation not permitted")
                }
                switch state {
                case .data(let host), .compressed(let host):
                    if host >= extentFile.length {
                        printError("ERROR: cluster offset for sector \(sector) points after EOF")
                        throw BlockError(errno: EINVAL, "Invalid argument")
                    }
                default:
                    break
                }
            }
        }
        return Qcow2CheckReport()
    }

    /// A line on standard error, as qemu-img's vmdk check prints its findings.
    private static func printError(_ line: String) {
        let text = Array((line + "\n").utf8)
        _ = text.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }
}

extension VmdkExtent {
    /// True for flat (and VMFS) extents.
    var isFlat: Bool {
        if case .flat = kind { return true }
        return false
    }
}
