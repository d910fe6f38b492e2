#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import BlockDrivers

/// `blockimg create`: a new raw or qcow2 image.
public struct CreateCommand: Sendable {
    /// Where to create the image.
    public var path: String
    /// `raw` or `qcow2`.
    public var format: String
    /// The size argument, when given.
    public var size: String?
    /// Every `-o` argument.
    public var options: [String]
    /// `-b`: the backing file.
    public var backingFile: String?
    /// `-F`: the backing file's format.
    public var backingFormat: String?
    /// `-u`: do not open the backing file (the size must then be given).
    public var unsafe: Bool

    /// Describes a create request.
    public init(path: String, format: String, size: String?, options: [String], backingFile: String?, backingFormat: String?, unsafe: Bool) {
        self.path = path
        self.format = format
        self.size = size
        self.options = options
        self.backingFile = backingFile
        self.backingFormat = backingFormat
        self.unsafe = unsafe
    }

    /// Validates everything, then writes the image; returns the "Formatting ..." line. Nothing is created on error.
    public func run() throws(ImageToolError) -> String {
        try ImageFiles.checkFormat(format)
        var parsed = try CreateOptions(options, format: format)
        let backing = backingFile ?? parsed.values["backing_file"]
        let backingFmt = backingFormat ?? parsed.values["backing_fmt"]
        let takesBacking = format == "qcow2" || ImageFormats.named(format)?.createOptions.contains("backing_file") == true
        if backing != nil && !takesBacking { throw ImageToolError("Backing file not supported for file format '\(format)'") }
        var virtualSize = try parsed.size("size")
        if let size {
            guard let value = Sizes.parse(size) else {
                throw ImageToolError("Invalid image size specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.")
            }
            virtualSize = value
        }
        if let backing {
            guard let backingFmt else { throw ImageToolError("\(path): Backing file specified without backing format") }
            try ImageFiles.checkFormat(backingFmt)
            if !unsafe {
                let image = try ImageFiles.open(ImageFiles.resolveBacking(backing, of: path), format: backingFmt, readOnly: true)
                if virtualSize == nil { virtualSize = image.node.length }
                image.close()
            }
        }
        guard var virtualSize else { throw ImageToolError("\(path): Image creation needs a size parameter") }
        // qemu-img rounds sizes up to whole 512-byte sectors.
        virtualSize = (virtualSize + 511) / 512 * 512
        parsed.values["size"] = String(virtualSize)
        if format == "qcow2" {
            var settings = try parsed.qcow2(size: virtualSize)
            settings.backingFile = backing
            settings.backingFormat = backing == nil ? nil : backingFmt
            do { _ = try Qcow2Create.layout(settings) } catch { throw ImageToolError("\(path): \(error.message)") }
            try ImageFiles.writeQcow2(path, settings)
            return formattingLine(settings)
        }
        if let registered = ImageFormats.named(format), format != "raw" {
            guard let create = registered.create else {
                throw ImageToolError("Format driver '\(format)' does not support image creation")
            }
            var options = parsed.values
            options.removeValue(forKey: "size")
            if let backing { options["backing_file"] = backing }
            if let backingFmt, backing != nil { options["backing_fmt"] = backingFmt }
            do {
                let words = try create(path, virtualSize, options)
                return "Formatting '\(path)', fmt=\(format)" + (words.isEmpty ? "" : " " + words)
            } catch {
                throw ImageToolError("\(path): \(error.message)")
            }
        }
        let mode = parsed.values["preallocation"] ?? "off"
        guard ["off", "falloc", "full"].contains(mode) else {
            throw ImageToolError("Parameter 'preallocation': invalid value '\(mode)' for raw (use off, falloc or full)")
        }
        try ImageFiles.writeRaw(path, size: virtualSize, preallocation: mode)
        return "Formatting '\(path)', fmt=raw size=\(virtualSize)" + (mode == "off" ? "" : " preallocation=\(mode)")
    }

    private func formattingLine(_ settings: Qcow2CreateOptions) -> String {
        var line = "Formatting '\(path)', fmt=qcow2 cluster_size=\(settings.clusterSize) extended_l2=off compression_type=zlib size=\(settings.size)"
        if settings.version == 2 { line += " compat=0.10" }
        if let backing = settings.backingFile { line += " backing_file=\(backing)" }
        if let backingFormat = settings.backingFormat { line += " backing_fmt=\(backingFormat)" }
        if settings.preallocation != .off { line += " preallocation=\(settings.preallocation.rawValue)" }
        line += " lazy_refcounts=\(settings.lazyRefcounts ? "on" : "off") refcount_bits=\(settings.refcountBits)"
        return line
    }
}

extension ImageFiles {
    /// Writes a new qcow2 image at `path`; removes the file again when anything fails.
    static func writeQcow2(_ path: String, _ settings: Qcow2CreateOptions) throws(ImageToolError) {
        let (graph, file) = try createFile(path)
        defer { graph.closeAll() }
        do {
            try Qcow2Create.format(file, options: settings)
            if settings.preallocation == .falloc {
                let plan = try Qcow2Create.layout(settings)
                for range in plan.dataRanges { try allocate(path, range) }
            }
        } catch {
            if !RemoteURI.isRemote(path) { unlink(path) }
            throw ImageToolError("\(path): \(error.message)")
        }
    }

    /// Writes a new raw image at `path`; removes the file again when anything fails.
    static func writeRaw(_ path: String, size: UInt64, preallocation: String) throws(ImageToolError) {
        let (graph, file) = try createFile(path)
        defer { graph.closeAll() }
        if RemoteURI.isRemote(path) {
            // A remote target is not created: it must be large enough already, as qemu-img's
            // fallback for protocols that cannot create images requires.
            guard file.length >= size else { throw ImageToolError("\(path): Cannot grow device files") }
            return
        }
        do {
            try file.resize(to: size)
            switch preallocation {
            case "falloc": try allocate(path, 0..<size)
            case "full": try Qcow2Create.writeZeroBytes(file, 0..<size)
            default: break
            }
            try file.flush()
        } catch {
            unlink(path)
            throw ImageToolError("\(path): \(error.message)")
        }
    }

    /// Reserves a file's blocks for a range (`posix_fallocate`).
    private static func allocate(_ path: String, _ range: Range<UInt64>) throws(BlockError) {
        guard !range.isEmpty else { return }
        let fd = Glibc.open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw .posix("open \(path)") }
        defer { Glibc.close(fd) }
        let result = posix_fallocate(fd, off_t(range.lowerBound), off_t(range.count))
        guard result == 0 else { throw .posix("fallocate \(path)", errno: result) }
    }
}
