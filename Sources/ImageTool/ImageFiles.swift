#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import BlockDrivers
import JSON
import LogOptionsClock

/// An opened image: the format node on top, its protocol (`file`) node, and the graph that holds them.
public final class OpenedImage {
    /// The graph the nodes live in.
    public let graph: BlockGraph
    /// The format node (`raw` or `qcow2`).
    public let node: BlockNode
    /// The path given.
    public let path: String
    /// The format name.
    public let format: String

    init(graph: BlockGraph, node: BlockNode, path: String, format: String) {
        self.graph = graph
        self.node = node
        self.path = path
        self.format = format
    }

    /// The protocol node under the format node.
    public var file: BlockNode { node.children.first { $0.role == "file" }?.node ?? node }
    /// The backing node, when the image has one and it was opened.
    public var backing: BlockNode? { node.children.first { $0.role == "backing" }?.node }
    /// The qcow2 header, for qcow2 images.
    public var qcow2Header: Qcow2Header? { (node.driver as? Qcow2Driver)?.header }

    /// Flushes and closes every node.
    public func close() {
        try? node.flush()
        graph.closeAll()
    }
}

/// Finding, probing, creating and opening image files.
public enum ImageFiles {
    /// The formats `blockimg` reads (and writes, where the format can be written).
    public static var formats: [String] { ["raw", "qcow2"] + ImageFormats.all.map(\.name) }

    /// The format whose probe claims the file's first bytes (see `ImageFormats.probe`), else `raw`.
    public static func probe(_ path: String) throws(ImageToolError) -> String {
        if RemoteURI.isRemote(path) { return try probeRemote(path) }
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw ImageToolError("Could not open '\(path)': \(String(cString: strerror(errno)))")
        }
        defer { Glibc.close(fd) }
        var header = [UInt8](repeating: 0, count: ImageFormats.probeLength)
        let count = header.withUnsafeMutableBytes { pread(fd, $0.baseAddress, ImageFormats.probeLength, 0) }
        return ImageFormats.probe(header: Array(header[0..<max(count, 0)]), filename: path)
    }

    /// Probes a remote image by reading its first bytes through its protocol node.
    static func probeRemote(_ path: String) throws(ImageToolError) -> String {
        let graph = BlockGraph(drivers: Drivers.all)
        defer { graph.closeAll() }
        do {
            let node = try graph.open(.object(try RemoteURI.definition(path, readOnly: true)), context: path)
            guard node.length >= 4 else { return "raw" }
            let length = Int(min(UInt64(ImageFormats.probeLength), node.length))
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: ImageFormats.probeLength, alignment: 4096)
            defer { buffer.deallocate() }
            try node.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length]), at: 0)
            return ImageFormats.probe(header: Array(buffer[0..<length]), filename: path)
        } catch let error as OptionError {
            throw ImageToolError("Could not open '\(path)': \(error.message)")
        } catch let error as BlockError {
            throw ImageToolError("Could not read '\(path)': \(error.message)")
        } catch {
            throw error as! ImageToolError
        }
    }

    /// The protocol node under an image: a `file` node, or the remote node of a URI.
    static func protocolDefinition(_ path: String, readOnly: Bool) throws(ImageToolError) -> [String: OptionValue] {
        if RemoteURI.isRemote(path) { return try RemoteURI.definition(path, readOnly: readOnly) }
        return ["driver": .string("file"), "filename": .string(path), "read-only": .bool(readOnly)]
    }

    /// Checks a format name given with `-f`, `-F` or `-O`.
    public static func checkFormat(_ name: String) throws(ImageToolError) {
        guard formats.contains(name) else {
            throw ImageToolError("Unknown file format '\(name)' (supported: \(formats.joined(separator: ", ")))")
        }
    }

    /// The format given with `-f` (checked), else the probed one.
    public static func format(_ given: String?, of path: String) throws(ImageToolError) -> String {
        if let given {
            try checkFormat(given)
            return given
        }
        return try probe(path)
    }

    /// Opens an image; `withBacking: false` leaves a qcow2 image's backing file closed.
    public static func open(
        _ path: String, format: String?, readOnly: Bool, withBacking: Bool = true
    ) throws(ImageToolError) -> OpenedImage {
        if let format { try checkFormat(format) }
        guard RemoteURI.isRemote(path) || access(path, F_OK) == 0 else {
            throw ImageToolError("Could not open '\(path)': No such file or directory")
        }
        let chosen: String
        if let format { chosen = format } else { chosen = try probe(path) }
        var definition: [String: OptionValue] = [
            "driver": .string(chosen),
            "read-only": .bool(readOnly),
            "file": .object(try protocolDefinition(path, readOnly: readOnly)),
        ]
        if chosen == "qcow2" && !withBacking { definition["backing"] = .null }
        let graph = BlockGraph(drivers: Drivers.all)
        do {
            let node = try graph.open(.object(definition), context: path)
            return OpenedImage(graph: graph, node: node, path: path, format: chosen)
        } catch {
            graph.closeAll()
            throw ImageToolError("Could not open '\(path)': \(error.message)")
        }
    }

    /// Creates (or truncates) a file and opens it as a writable protocol node.
    static func createFile(_ path: String) throws(ImageToolError) -> (BlockGraph, BlockNode) {
        if RemoteURI.isRemote(path) { return try openRemoteForCreate(path) }
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ImageToolError("\(path): Could not create '\(path)': \(String(cString: strerror(errno)))") }
        Glibc.close(fd)
        let graph = BlockGraph(drivers: Drivers.all)
        do {
            let node = try graph.open(.object(["driver": .string("file"), "filename": .string(path)]), context: path)
            return (graph, node)
        } catch {
            graph.closeAll()
            unlink(path)
            throw ImageToolError("\(path): \(error.message)")
        }
    }

    /// A remote target of `create` or `convert` exists already: it is opened (and later written) as it is.
    static func openRemoteForCreate(_ path: String) throws(ImageToolError) -> (BlockGraph, BlockNode) {
        guard !RemoteURI.isReadOnly(path) else { throw ImageToolError("\(path): the \(RemoteURI.scheme(of: path) ?? "") driver is read-only") }
        let graph = BlockGraph(drivers: Drivers.all)
        do {
            let node = try graph.open(.object(try RemoteURI.definition(path, readOnly: false)), context: path)
            return (graph, node)
        } catch let error as OptionError {
            graph.closeAll()
            throw ImageToolError("\(path): \(error.message)")
        } catch {
            graph.closeAll()
            throw error as! ImageToolError
        }
    }

    /// Resolves a backing file name the way qemu does: relative names are relative to the image's directory.
    public static func resolveBacking(_ name: String, of imagePath: String) -> String {
        if name.hasPrefix("/") || name.contains("://") { return name }
        let directory = PathName.directory(of: imagePath)
        return directory.isEmpty ? name : directory + "/" + name
    }
}
