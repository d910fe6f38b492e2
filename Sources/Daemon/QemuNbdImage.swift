#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import JSON
import LogOptionsClock
import BlockDrivers

/// Opening FILE as qemu-nbd does: the format probed when `-f` is absent (with QEMU's warning for
/// a writable raw guess), QEMU's messages for a missing file, an unknown format, a bad offset, a
/// missing snapshot or bitmap, and the temporary overlay of `-s`.
enum QemuNbdImage {
    /// The formats blockd-nbd opens.
    static var formats: [String] { ["raw", "qcow2"] + ImageFormats.all.map(\.name) }
    /// Other format names QEMU knows: refused as not supported rather than unknown.
    static let qemuFormats = ["bochs", "cloop", "dmg", "luks", "parallels", "qcow", "qed", "vdi", "vhdx", "vmdk", "vpc", "vvfat"]

    /// The top node's definition and, with `-s`, the overlay file (already unlinked from view by the caller at exit).
    static func definition(_ options: QemuNbdOptions) throws(QemuNbdError) -> (OptionValue, String?) {
        let file = options.file ?? ""
        func failure(_ message: String) -> QemuNbdError { QemuNbdError("Failed to blk_new_open '\(file)': \(message)") }
        var image: [String: OptionValue]
        var format: String?
        if options.imageOpts {
            if options.format != nil { throw QemuNbdError("--image-opts and -f are mutually exclusive") }
            let (definition, path) = try options.imageOptsDefinition()
            image = definition
            if image["driver"] == nil, let path {
                try checkAccess(path, readOnly: options.readOnly, failure)
                image["driver"] = .string(probe(path, warn: !options.readOnly))
            }
            if case .string(let driver)? = image["driver"] { format = driver }
        } else {
            try checkAccess(file, readOnly: options.readOnly, failure)
            if let given = options.format {
                guard formats.contains(given) else {
                    if qemuFormats.contains(given) { throw failure("Driver '\(given)' is not supported by blockd-nbd (\(formats.joined(separator: ", ")))") }
                    throw failure("Unknown driver '\(given)'")
                }
                format = given
                if given == "qcow2" && probe(file, warn: false) != "qcow2" { throw failure("Image is not in qcow2 format") }
            } else {
                format = probe(file, warn: !options.readOnly)
            }
            guard case .object(let members) = options.imageDefinition(format: format!) else { return (.null, nil) }
            image = members
        }

        // Open once, read-only, to check what QEMU checks before serving.
        let graph = BlockGraph(drivers: Drivers.all)
        defer { graph.closeAll() }
        var probeDefinition = image
        probeDefinition["read-only"] = .bool(true)
        if case .object(var child)? = probeDefinition["file"] {
            child["read-only"] = .bool(true)
            probeDefinition["file"] = .object(child)
        }
        probeDefinition.removeValue(forKey: "node-name")
        let node: BlockNode
        do {
            node = try graph.open(.object(probeDefinition), context: "blockd-nbd")
        } catch {
            throw failure(plain(error.message))
        }
        if options.offset > node.length {
            throw QemuNbdError("Offset (\(options.offset)) cannot be greater than size of the containing file (\(node.length))")
        }
        try checkSnapshot(options, node: node)
        if let bitmap = options.bitmaps.first {
            let header = (node.driver as? Qcow2Driver)?.header
            if header?.hasConsistentBitmaps == true {
                throw QemuNbdError("Bitmap '\(bitmap)': exporting dirty bitmaps is not supported yet by blockd-nbd")
            }
            throw QemuNbdError("Bitmap '\(bitmap)' is not found")
        }
        var overlay: String?
        if options.snapshot {
            overlay = try createOverlay(size: node.length - 0, backing: options.imageOpts ? nil : absolute(file), format: format)
        }
        return (options.topDefinition(image: image, format: format, overlay: overlay), overlay)
    }

    /// QEMU's message for a file that cannot be opened.
    private static func checkAccess(_ path: String, readOnly: Bool, _ failure: (String) -> QemuNbdError) throws(QemuNbdError) {
        let fd = open(path, (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC)
        guard fd >= 0 else { throw failure("Could not open '\(path)': \(String(cString: strerror(errno)))") }
        close(fd)
    }

    /// `qcow2` when the file starts with its magic, else `raw` (with QEMU's warning when writable).
    private static func probe(_ path: String, warn: Bool) -> String {
        var header = [UInt8](repeating: 0, count: ImageFormats.probeLength)
        var count = 0
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd >= 0 {
            count = max(read(fd, &header, header.count), 0)
            close(fd)
        }
        let format = ImageFormats.probe(header: Array(header[0..<count]), filename: path)
        if format != "raw" { return format }
        if warn {
            QemuNbdRunner.printError("""
                WARNING: Image format was not specified for '\(path)' and probing guessed raw.
                         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.
                         Specify the 'raw' format explicitly to remove the restrictions.

                """)
        }
        return "raw"
    }

    /// `-l`: QEMU's messages when the snapshot cannot be loaded.
    private static func checkSnapshot(_ options: QemuNbdOptions, node: BlockNode) throws(QemuNbdError) {
        let wanted = options.loadSnapshot
        guard wanted != nil || options.loadSnapshotID != nil || options.loadSnapshotName != nil else { return }
        guard let qcow2 = node.driver as? Qcow2Driver, let file = node.children.first(where: { $0.role == "file" })?.node else {
            throw QemuNbdError(
                "Failed to load snapshot: Block format '\(node.driver.driverName)' used by device '' does not support temporarily loading internal snapshots")
        }
        let snapshots = (try? Qcow2Snapshots.list(file: file, header: qcow2.header)) ?? []
        let found = snapshots.contains { snapshot in
            if let wanted { return snapshot.id == wanted || snapshot.name == wanted }
            return (options.loadSnapshotID.map { $0 == snapshot.id } ?? true) && (options.loadSnapshotName.map { $0 == snapshot.name } ?? true)
        }
        guard found else { throw QemuNbdError("Failed to load snapshot: Can't find snapshot") }
        throw QemuNbdError("Failed to load snapshot: loading an internal snapshot is not supported yet by blockd-nbd")
    }

    /// Creates the temporary qcow2 overlay of `-s` (in $TMPDIR, else /var/tmp, as QEMU does).
    private static func createOverlay(size: UInt64, backing: String?, format: String?) throws(QemuNbdError) -> String {
        let directory = getenv("TMPDIR").map { String(cString: $0) } ?? "/var/tmp"
        var template = Array("\(directory)/vl.XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw QemuNbdError("Could not get temporary filename: \(String(cString: strerror(errno)))") }
        close(fd)
        let path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let graph = BlockGraph(drivers: Drivers.all)
        defer { graph.closeAll() }
        do {
            let file = try graph.open(.object(["driver": .string("file"), "filename": .string(path)]), context: "blockd-nbd")
            var create = Qcow2CreateOptions(size: size)
            create.backingFile = backing
            create.backingFormat = backing == nil ? nil : format
            try Qcow2Create.format(file, options: create)
        } catch let error as OptionError {
            unlink(path)
            throw QemuNbdError("Could not create temporary overlay '\(path)': \(error.message)")
        } catch {
            unlink(path)
            throw QemuNbdError("Could not create temporary overlay '\(path)': \(error)")
        }
        return path
    }

    private static func absolute(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX))
        guard getcwd(&buffer, buffer.count) != nil else { return path }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) + "/" + path
    }

    /// A blockd open error without the option context blockd puts in front (`--blockdev 'x' (driver y): `),
    /// in QEMU's words where they are known.
    static func plain(_ message: String) -> String {
        if let range = message.firstRange(of: "): unknown parameter '"),
           let driverStart = message[..<range.lowerBound].ranges(of: "(driver ").last {
            let driver = message[driverStart.upperBound..<range.lowerBound]
            let option = message[range.upperBound...].dropLast()
            return formats.contains(String(driver)) ? "Block format '\(driver)' does not support the option '\(option)'"
                : "Block protocol '\(driver)' doesn't support the option '\(option)'"
        }
        var text = Substring(message)
        while text.hasPrefix("--blockdev") || text.hasPrefix("blockd-nbd") || text.hasPrefix("--export"), let colon = text.firstRange(of: ": ") {
            text = text[colon.upperBound...]
        }
        return String(text)
    }
}
