#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock

/// The backing file of an image format: opening the one its header names (qed, qcow), and block
/// status through it for the formats with backing chains.
enum ImageBacking {
    /// Block status of `backing` for an unallocated run of the image above it, one layer deeper
    /// (beyond the end of the backing node, or without one, the run is a hole).
    static func status(of backing: BlockNode?, at offset: UInt64, length count: UInt64) throws(BlockError) -> [Extent] {
        guard let backing, offset < backing.length else { return [.hole(count)] }
        var result: [Extent] = []
        var position = offset
        let end = offset + count
        let backingEnd = min(end, backing.length)
        while position < backingEnd {
            let pieces = try backing.blockStatus(at: position, length: backingEnd - position)
            guard !pieces.isEmpty else { break }
            for var piece in pieces where position < backingEnd {
                piece.length = min(piece.length, backingEnd - position)
                piece.depth = piece.depth.map { $0 + 1 }
                piece.hostOffset = nil
                result.append(piece)
                position += piece.length
            }
        }
        if position < end { result.append(.hole(end - position)) }
        return result
    }

    /// The backing node named by the `backing` option when given (null or "" for none), else by
    /// the header's stored name relative to the image; opened read-only, nil when there is none.
    static func open(
        _ options: OptionReader, context: OpenContext, storedName: String?, storedFormat: String?, file: BlockNode
    ) throws(OptionError) -> BlockNode? {
        if let value = options.value("backing") {
            switch value {
            case .null, .string(""): return nil
            default: return try context.child("backing", of: options)
            }
        }
        guard let name = storedName, !name.isEmpty else { return nil }
        let path = resolve(name, of: file.driver.filename)
        let format = storedFormat ?? probe(path)
        let definition: OptionValue = .object([
            "driver": .string(format),
            "read-only": .bool(true),
            "file": .object(["driver": .string("file"), "filename": .string(path), "read-only": .bool(true)]),
        ])
        do {
            return try context.graph.open(definition, context: "\(options.context) → backing '\(path)'", inheritReadOnly: true)
        } catch {
            throw options.error(qmp: "Could not open backing file: \(error.message)", commandLine: error.message)
        }
    }

    /// `name` relative to the directory of the image at `imagePath` unless it is absolute or a URI.
    static func resolve(_ name: String, of imagePath: String) -> String {
        guard !name.hasPrefix("/") && !name.contains("://") else { return name }
        let directory = PathName.directory(of: imagePath)
        return directory.isEmpty ? name : directory + "/" + name
    }

    /// The format probing finds in the first bytes of the file at `path` (raw when unreadable).
    static func probe(_ path: String) -> String {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "raw" }
        defer { Glibc.close(fd) }
        var header = [UInt8](repeating: 0, count: ImageFormats.probeLength)
        let count = header.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        return ImageFormats.probe(header: Array(header[0..<max(count, 0)]), filename: path)
    }

    /// `count` bytes of `file` at `offset`; an error when they lie past its end.
    static func readBytes(_ file: BlockNode, at offset: UInt64, count: Int, what: String) throws(BlockError) -> [UInt8] {
        guard offset <= file.length, UInt64(count) <= file.length - offset else {
            throw .invalid("\(what) at \(offset)+\(count) lies past the end of the file (\(file.length) bytes)")
        }
        var bytes = [UInt8](repeating: 0, count: count)
        if count > 0 { try bytes.withMutableBytes { (raw) throws(BlockError) in try file.read(into: raw, at: offset) } }
        return bytes
    }
}
