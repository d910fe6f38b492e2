import BlockCore
import BlockDrivers
import JSON

/// `blockimg info`: what an image is (ImageInfo), alone or with its backing chain.
public struct InfoCommand: Sendable {
    /// The image.
    public var path: String
    /// `-f`, when given.
    public var format: String?
    /// `--backing-chain`.
    public var backingChain: Bool

    /// Describes an info request.
    public init(path: String, format: String?, backingChain: Bool) {
        self.path = path
        self.format = format
        self.backingChain = backingChain
    }

    /// The ImageInfo of the image (and of each backing image with `--backing-chain`), top first.
    public func infos() throws(ImageToolError) -> [JSONValue] {
        try described().map(\.info)
    }

    /// Each image's ImageInfo with its snapshot table as `info` prints it, top first.
    private func described() throws(ImageToolError) -> [(info: JSONValue, snapshots: String?)] {
        var result: [(info: JSONValue, snapshots: String?)] = []
        var next: (path: String, format: String?)? = (path, format)
        var seen: Set<String> = []
        while let (current, currentFormat) = next {
            guard seen.insert(current).inserted else { throw ImageToolError("Backing file '\(current)' creates a loop in the backing chain") }
            let image = try ImageFiles.open(current, format: currentFormat, readOnly: true, withBacking: false)
            defer { image.close() }
            let snapshots = try SnapshotCommand.snapshots(of: image)
            var info = Self.info(of: image)
            if !snapshots.isEmpty, case .object(var members) = info {
                members["snapshots"] = .array(snapshots.map(SnapshotCommand.info))
                info = .object(members)
            }
            result.append((info, snapshots.isEmpty ? nil : SnapshotCommand.table(snapshots)))
            next = nil
            if backingChain, let header = image.qcow2Header, let backing = header.backingFile, !backing.isEmpty {
                next = (ImageFiles.resolveBacking(backing, of: current), header.backingFormat)
            }
        }
        return result
    }

    /// `--output=json`: one ImageInfo object, or an array of them with `--backing-chain`.
    public func json() throws(ImageToolError) -> String {
        let all = try infos()
        return (backingChain ? JSONValue.array(all) : all[0]).prettyPrinted()
    }

    /// `--output=human`, as qemu-img prints it.
    public func human() throws(ImageToolError) -> String {
        try described().map { Self.humanText($0.info, snapshots: $0.snapshots) }.joined(separator: "\n\n")
    }

    /// The ImageInfo of one opened image.
    static func info(of image: OpenedImage) -> JSONValue {
        var info: [String: JSONValue] = [
            "filename": .string(image.path),
            "format": .string(image.format),
            "virtual-size": .integer(Int64(image.node.length)),
            "dirty-flag": .bool(false),
        ]
        if let actual = image.file.driver.allocatedSize { info["actual-size"] = .integer(Int64(actual)) }
        if let details = ImageFormats.named(image.format)?.details?(image.node) {
            if let cluster = details.clusterSize { info["cluster-size"] = .integer(Int64(cluster)) }
            info["dirty-flag"] = details.showsDirtyFlag ? .bool(details.dirty) : nil
            if let specific = details.specific { info["format-specific"] = specific }
            if let backing = details.backingFile, !backing.isEmpty {
                info["backing-filename"] = .string(backing)
                info["full-backing-filename"] = .string(ImageFiles.resolveBacking(backing, of: image.path))
                if let format = details.backingFormat { info["backing-filename-format"] = .string(format) }
            }
        }
        if let header = image.qcow2Header {
            info["cluster-size"] = .integer(Int64(header.clusterSize))
            info["dirty-flag"] = .bool(header.isDirty)
            var data: [String: JSONValue] = [
                "compat": .string(header.version == 2 ? "0.10" : "1.1"),
                "compression-type": .string("zlib"),
                "refcount-bits": .integer(Int64(header.refcountBits)),
            ]
            if header.version == 3 {
                data["lazy-refcounts"] = .bool(header.lazyRefcounts)
                if let bitmaps = try? Qcow2BitmapSummary.list(file: image.file, header: header), !bitmaps.isEmpty {
                    data["bitmaps"] = .array(bitmaps.map { bitmap in
                        .object(["flags": .array(bitmap.flags.map { .string($0) }), "name": .string(bitmap.name),
                                 "granularity": .integer(Int64(bitmap.granularity))])
                    })
                }
                data["corrupt"] = .bool(header.isCorrupt)
                data["extended-l2"] = .bool(false)
            }
            info["format-specific"] = .object(["type": .string("qcow2"), "data": .object(data)])
            if let backing = header.backingFile, !backing.isEmpty {
                info["backing-filename"] = .string(backing)
                info["full-backing-filename"] = .string(ImageFiles.resolveBacking(backing, of: image.path))
                if let format = header.backingFormat { info["backing-filename-format"] = .string(format) }
            }
        }
        return .object(info)
    }

    /// One ImageInfo as qemu-img's human output.
    static func humanText(_ info: JSONValue, snapshots: String?) -> String {
        func string(_ key: String) -> String? { if case .string(let text)? = info[key] { return text } else { return nil } }
        func integer(_ key: String) -> Int64? { if case .integer(let number)? = info[key] { return number } else { return nil } }
        let size = UInt64(integer("virtual-size") ?? 0)
        var lines = [
            "image: \(string("filename") ?? "")",
            "file format: \(string("format") ?? "")",
            "virtual size: \(Sizes.human(size)) (\(size) bytes)",
            "disk size: \(integer("actual-size").map { Sizes.human(UInt64($0)) } ?? "unavailable")",
        ]
        if let cluster = integer("cluster-size") { lines.append("cluster_size: \(cluster)") }
        if let backing = string("backing-filename") {
            let full = string("full-backing-filename")
            lines.append("backing file: \(backing)" + (full != nil && full != backing ? " (actual path: \(full!))" : ""))
            if let format = string("backing-filename-format") { lines.append("backing file format: \(format)") }
        }
        if let snapshots { lines.append(snapshots) }
        if case .object(let specific)? = info["format-specific"], case .object(let data)? = specific["data"] {
            lines.append("Format specific information:")
            let order = ["compat", "compression-type", "lazy-refcounts", "bitmaps", "refcount-bits", "corrupt", "extended-l2",
                         "cid", "parent-cid", "create-type", "extents"]
            for key in order {
                guard let value = data[key] else { continue }
                if key == "extents", case .array(let extents) = value {
                    lines.append("    extents:")
                    lines += extentLines(extents)
                    continue
                }
                if key == "bitmaps", case .array(let bitmaps) = value {
                    lines.append("    bitmaps:")
                    lines += bitmapLines(bitmaps)
                    continue
                }
                let text: String
                switch value {
                case .string(let word): text = word
                case .bool(let flag): text = flag ? "true" : "false"
                case .integer(let number): text = String(number)
                default: text = value.serialized()
                }
                lines.append("    \(String(key.map { $0 == "-" ? " " : $0 })): \(text)")
            }
        }
        return lines.joined(separator: "\n")
    }

    /// The `extents:` list of a vmdk image in qemu-img's human output.
    private static func extentLines(_ extents: [JSONValue]) -> [String] {
        var lines: [String] = []
        for (index, extent) in extents.enumerated() {
            lines.append("        [\(index)]:")
            for key in ["compressed", "virtual-size", "filename", "cluster-size", "format"] {
                switch extent[key] {
                case .string(let text)?: lines.append("            \(key.replacingDashes): \(text)")
                case .integer(let number)?: lines.append("            \(key.replacingDashes): \(number)")
                case .bool(let flag)?: lines.append("            \(key.replacingDashes): \(flag)")
                default: break
                }
            }
        }
        return lines
    }

    /// The `bitmaps:` list of qemu-img's human output: index, flags, name, granularity.
    private static func bitmapLines(_ bitmaps: [JSONValue]) -> [String] {
        var lines: [String] = []
        for (index, bitmap) in bitmaps.enumerated() {
            lines.append("        [\(index)]:")
            lines.append("            flags:")
            if case .array(let flags)? = bitmap["flags"] {
                for (flagIndex, flag) in flags.enumerated() {
                    if case .string(let name) = flag { lines.append("                [\(flagIndex)]: \(name)") }
                }
            }
            if case .string(let name)? = bitmap["name"] { lines.append("            name: \(name)") }
            if case .integer(let granularity)? = bitmap["granularity"] { lines.append("            granularity: \(granularity)") }
        }
        return lines
    }
}

extension String {
    /// `virtual-size` as qemu-img's human output spells it: `virtual size`.
    fileprivate var replacingDashes: String { String(map { $0 == "-" ? " " : $0 }) }
}
