import BlockCore
import BlockDrivers
import LogOptionsClock

/// A node's file name as QEMU reports it ("file" and "image.filename" of query-named-block-nodes):
/// the image's path or a protocol name when the node can be reopened from it alone, else a
/// `json:{...}` pseudo-filename of the options that matter.
struct NodeFilename {
    /// What QEMU reports.
    var filename: String
    /// QEMU's "exact filename": the plain name when there is one (nil when `filename` is `json:`).
    var exact: String?
}

extension Daemon {
    /// The options of each driver that change what a node is (QEMU's `strong_runtime_opts`); a
    /// name ending in "." takes every option below it.
    static let strongOptions: [String: [String]] = [
        "null-co": ["size", "read-zeroes"],
        "null-aio": ["size", "read-zeroes"],
        "raw": ["offset", "size"],
        "throttle": ["throttle-group"],
        "blkdebug": ["config", "inject-error.", "set-state.", "align", "max-transfer", "opt-write-zero", "max-write-zero",
                     "opt-discard", "max-discard"],
        "quorum": ["vote-threshold", "blkverify", "rewrite-corrupted", "read-pattern"],
        "nbd": ["server.", "export", "tls-creds", "tls-hostname", "path", "host", "port"],
    ]

    /// Drivers that open a file or a protocol themselves rather than a format over a child.
    static let protocolDrivers: Set<String> = ["file", "host_device", "host_cdrom", "null-co", "null-aio", "blkdebug", "blkverify",
                                               "nbd", "http", "https", "ftp", "ftps", "tftp"]

    /// The node's file name as QEMU reports it.
    func qemuFilename(_ node: BlockNode, depth: Int = 0) -> NodeFilename {
        let exact = exactFilename(node, depth: depth)
        return NodeFilename(filename: exact ?? "json:" + fullOpenOptions(node, depth: depth).json, exact: exact)
    }

    /// The plain file name, when the node has one.
    private func exactFilename(_ node: BlockNode, depth: Int) -> String? {
        guard depth < 64 else { return nil }
        let driver = node.driver.driverName
        let options = fullOpenOptions(node, depth: depth)
        func child(_ role: String) -> BlockNode? { node.children.first { $0.role == role }?.node }
        switch driver {
        case "file", "host_device", "host_cdrom", "nbd", "http", "https", "ftp", "ftps", "tftp":
            return node.driver.filename
        case "null-co", "null-aio":
            return options.keys.allSatisfy { ["driver", "filename", "latency-ns"].contains($0) } ? "\(driver)://" : nil
        case "blkdebug":
            guard let image = child("file"), let imageName = exactFilename(image, depth: depth + 1),
                  options.keys.allSatisfy({ ["config", "image", "x-image", "driver"].contains($0) }) else { return nil }
            let config: String
            if case .string(let path)? = options["config"] { config = path } else { config = "" }
            return "blkdebug:\(config):\(imageName)"
        case "mirror_top":
            // A job's filter node shows its child's name, as QEMU's filters do.
            return child("backing").flatMap { exactFilename($0, depth: depth + 1) }
        case "blkverify":
            guard let raw = child("file").flatMap({ exactFilename($0, depth: depth + 1) }),
                  let test = child("test").flatMap({ exactFilename($0, depth: depth + 1) }) else { return nil }
            return "blkverify:\(raw):\(test)"
        case "raw", "qcow2":
            // A format over a protocol node takes the protocol's name, unless options or a changed
            // backing file make the node more than "this file, in this format".
            guard let file = child("file"), Daemon.protocolDrivers.contains(file.driver.driverName),
                  let name = exactFilename(file, depth: depth + 1),
                  !hasStrongOptions(node), !backingOverridden(node, depth: depth) else { return nil }
            return name
        default:
            return nil
        }
    }

    /// Whether the node's definition has one of its driver's strong options.
    private func hasStrongOptions(_ node: BlockNode) -> Bool {
        let options = definition(of: node)
        return (Daemon.strongOptions[node.driver.driverName] ?? []).contains { key in
            key.hasSuffix(".") ? options[String(key.dropLast())] != nil : options[key] != nil
        }
    }

    /// QEMU's `full_open_options`: the driver, the strong options and the children's own, which
    /// is what a `json:` pseudo-filename prints.
    func fullOpenOptions(_ node: BlockNode, depth: Int = 0) -> QDict {
        var dict = QDict()
        guard depth < 64 else { return dict }
        let options = definition(of: node)
        let driver = node.driver.driverName
        dict.put("driver", .string(driver))
        if let filename = options["filename"] { dict.put("filename", Daemon.qobject(filename, key: "filename")) }
        for key in Daemon.strongOptions[driver] ?? [] {
            if key.hasSuffix(".") {
                // QEMU flattens nested options into the node's options, then copies those under the
                // prefix in that dictionary's order: the same order here.
                let stem = String(key.dropLast())
                guard let value = options[stem] else { continue }
                var flat = QDict()
                Daemon.flatten(Daemon.qobject(value, key: stem), prefix: stem, into: &flat)
                for flatKey in flat.keys { dict.put(flatKey, flat[flatKey]!) }
            } else if let value = options[key] {
                dict.put(key, Daemon.qobject(value, key: key))
            }
        }
        if driver == "quorum" {
            let children = node.children.filter { $0.role.hasPrefix("children.") }
            dict.put("children", .list(children.map { .dict(fullOpenOptions($0.node, depth: depth + 1)) }))
            return dict
        }
        let overridden = backingOverridden(node, depth: depth)
        for (role, child) in node.children {
            if role == "backing" && !overridden { continue }
            dict.put(Daemon.qemuRole(role, of: node), .dict(fullOpenOptions(child, depth: depth + 1)))
        }
        if overridden && !node.children.contains(where: { $0.role == "backing" }) { dict.put("backing", .null) }
        return dict
    }

    /// Whether a qcow2 node's backing file is not the one its header names (QEMU's
    /// `bdrv_backing_overridden`): none where the header names one, or one the options name. A
    /// backing file given in the options counts as another unless its file name is the header's
    /// name as written (QEMU compares with the header's text, not the path made absolute).
    func backingOverridden(_ node: BlockNode, depth: Int = 0) -> Bool {
        guard let qcow2 = node.driver as? Qcow2Driver else { return false }
        let header = qcow2.header
        guard let backing = node.children.first(where: { $0.role == "backing" })?.node else {
            return fullBackingFilename(node, header: header) != nil
        }
        guard definition(of: node)["backing"] != nil else { return false }  // opened from the header
        return header.backingFile != qemuFilename(backing, depth: depth + 1).filename
    }

    /// The backing file name of a qcow2 header made absolute against the image's directory.
    func fullBackingFilename(_ node: BlockNode, header: Qcow2Header) -> String? {
        guard let name = header.backingFile, !name.isEmpty else { return nil }
        if name.hasPrefix("/") || name.contains(":") { return name }
        let image = node.children.first { $0.role == "file" }?.node.driver.filename ?? node.driver.filename
        let directory = PathName.directory(of: image)
        return directory.isEmpty ? name : directory + "/" + name
    }

    /// An option value as QEMU holds it after parsing: command-line strings become the integers
    /// and booleans the option's type asks for.
    static func qobject(_ value: OptionValue, key: String) -> QObject {
        switch value {
        case .object(let members):
            var dict = QDict()
            for (member, item) in members.sorted(by: { $0.key < $1.key }) { dict.put(member, qobject(item, key: member)) }
            return .dict(dict)
        case .array(let items):
            return .list(items.map { qobject($0, key: key) })
        case .string(let text):
            if integerOptions.contains(key), let number = OptionReader.parseSize(text) { return .integer(Int64(clamping: number)) }
            if booleanOptions.contains(key) {
                if ["on", "true", "yes"].contains(text) { return .bool(true) }
                if ["off", "false", "no"].contains(text) { return .bool(false) }
            }
            return .string(text)
        case .integer(let number): return .integer(number)
        case .bool(let flag): return .bool(flag)
        case .null: return .null
        default: return .string(value.serialized())
        }
    }

    /// Puts a nested option as QEMU's flattened keys ("inject-error.0.event"), in the order QEMU's
    /// `qdict_flatten` visits them.
    private static func flatten(_ value: QObject, prefix: String, into dict: inout QDict) {
        switch value {
        case .dict(let members):
            for key in members.keys { flatten(members[key]!, prefix: "\(prefix).\(key)", into: &dict) }
        case .list(let items):
            for (index, item) in items.enumerated() { flatten(item, prefix: "\(prefix).\(index)", into: &dict) }
        default:
            dict.put(prefix, value)
        }
    }

    private static let integerOptions: Set<String> = [
        "size", "offset", "align", "max-transfer", "opt-write-zero", "max-write-zero", "opt-discard", "max-discard",
        "vote-threshold", "latency-ns", "sector", "errno", "state", "new_state",
    ]
    private static let booleanOptions: Set<String> = ["read-zeroes", "blkverify", "rewrite-corrupted", "once", "immediately"]
}
