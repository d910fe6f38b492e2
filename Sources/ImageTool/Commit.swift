import BlockCore
import BlockDrivers

/// `blockimg commit`: writes what a qcow2 image holds into its backing file, then (unless told to
/// keep it) empties the image.
public struct CommitCommand: Sendable {
    /// The image.
    public var path: String
    /// `-f`, when given.
    public var format: String?
    /// `-d`: keep the image's contents instead of emptying it.
    public var keep: Bool

    /// Describes a commit request.
    public init(path: String, format: String?, keep: Bool) {
        self.path = path
        self.format = format
        self.keep = keep
    }

    /// Commits; returns "Image committed.".
    public func run() throws(ImageToolError) -> String {
        let image = try ImageFiles.open(path, format: format, readOnly: true)
        guard let header = image.qcow2Header, let backingName = header.backingFile, !backingName.isEmpty else {
            image.close()
            throw ImageToolError("Image does not have a backing file")
        }
        if !keep && header.snapshotCount > 0 {
            image.close()
            throw ImageToolError("\(path) has internal snapshots, so it cannot be emptied; use -d to keep its contents")
        }
        let base: OpenedImage
        do {
            base = try ImageFiles.open(ImageFiles.resolveBacking(backingName, of: path), format: header.backingFormat, readOnly: false)
        } catch {
            image.close()
            throw error
        }
        do {
            try copy(from: image.node, to: base.node)
        } catch {
            base.close()
            image.close()
            throw ImageToolError(error, "commit \(path)")
        }
        base.close()
        image.close()
        if !keep { try empty(header) }
        return "Image committed."
    }

    /// Writes every range the top image holds itself into the base.
    private func copy(from top: BlockNode, to base: BlockNode) throws(BlockError) {
        if base.length < top.length { try base.resize(to: top.length) }
        var buffer = [UInt8](repeating: 0, count: 2 << 20)
        var position: UInt64 = 0
        while position < top.length {
            let extents = try top.blockStatus(at: position, length: top.length - position)
            guard let first = extents.first, first.length > 0 else { break }
            let end = min(top.length, position + first.length)
            if first.depth == 0 && first.zero {
                try ChunkCopier.writeZeroes(base, at: position, count: end - position)
            } else if first.depth == 0 {
                var offset = position
                while offset < end {
                    let count = Int(min(UInt64(buffer.count), end - offset))
                    try buffer.withMutableBytes { (raw) throws(BlockError) in
                        let slice = UnsafeMutableRawBufferPointer(rebasing: raw[0..<count])
                        try top.read(into: slice, at: offset)
                        try base.write(UnsafeRawBufferPointer(slice), at: offset, fua: false)
                    }
                    offset += UInt64(count)
                }
            }
            position = end
        }
        try base.flush()
    }

    /// Replaces the image with an empty one of the same settings and backing file.
    private func empty(_ header: Qcow2Header) throws(ImageToolError) {
        var settings = Qcow2CreateOptions(size: header.size)
        settings.clusterSize = header.clusterSize
        settings.version = header.version
        settings.refcountBits = header.refcountBits
        settings.lazyRefcounts = header.lazyRefcounts
        settings.backingFile = header.backingFile
        settings.backingFormat = header.backingFormat
        do { _ = try Qcow2Create.layout(settings) } catch { throw ImageToolError(error, path) }
        try ImageFiles.writeQcow2(path, settings)
    }
}
