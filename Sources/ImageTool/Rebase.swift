import BlockCore
import BlockDrivers

/// `blockimg rebase`: gives a qcow2 image another backing file; the safe mode first copies into the
/// image whatever would read differently through the new backing file.
public struct RebaseCommand: Sendable {
    /// The image.
    public var path: String
    /// `-f`, when given.
    public var format: String?
    /// `-b`: the new backing file; empty for none.
    public var backingFile: String
    /// `-F`: the new backing file's format.
    public var backingFormat: String?
    /// `-u`: only rewrite the header.
    public var unsafe: Bool

    /// Describes a rebase request.
    public init(path: String, format: String?, backingFile: String, backingFormat: String?, unsafe: Bool) {
        self.path = path
        self.format = format
        self.backingFile = backingFile
        self.backingFormat = backingFormat
        self.unsafe = unsafe
    }

    /// Rebases; the image is unchanged when the new backing file cannot be opened.
    public func run() throws(ImageToolError) {
        let probe = try ImageFiles.open(path, format: format, readOnly: true, withBacking: false)
        let isQcow2 = probe.qcow2Header != nil
        probe.close()
        guard isQcow2 else { throw ImageToolError("Image format '\(format ?? "raw")' does not support backing files") }
        let newPath = backingFile.isEmpty ? nil : ImageFiles.resolveBacking(backingFile, of: path)
        var newFormat = backingFormat
        if let newPath, newFormat == nil {
            guard !unsafe else { throw ImageToolError("-u requires the backing file format (-F) when the format cannot be probed later") }
            newFormat = try ImageFiles.probe(newPath)
        }
        if let newFormat { try ImageFiles.checkFormat(newFormat) }
        if !unsafe { try copyDifferences(newPath: newPath, newFormat: newFormat) }
        try HeaderRewrite.setBacking(path, backingFile: backingFile.isEmpty ? nil : backingFile, backingFormat: newFormat)
    }

    /// Writes into the image every cluster it does not hold itself that reads differently through the new backing file.
    private func copyDifferences(newPath: String?, newFormat: String?) throws(ImageToolError) {
        let newBacking = try newPath.map { (path) throws(ImageToolError) in try ImageFiles.open(path, format: newFormat, readOnly: true) }
        defer { newBacking?.close() }
        let image = try ImageFiles.open(path, format: "qcow2", readOnly: false)
        defer { image.close() }
        let top = image.node
        let cluster = UInt64(image.qcow2Header?.clusterSize ?? 65536)
        var old = [UInt8](repeating: 0, count: Int(cluster))
        var new = [UInt8](repeating: 0, count: Int(cluster))
        var position: UInt64 = 0
        do {
            while position < top.length {
                let extents = try top.blockStatus(at: position, length: top.length - position)
                guard let first = extents.first, first.length > 0 else { break }
                let end = min(top.length, position + first.length)
                if first.depth != 0 {
                    // Not stored in the image: compare cluster by cluster what the old and new backing files give.
                    var offset = position
                    while offset < end {
                        let count = Int(min(cluster - offset % cluster, end - offset))
                        try old.withMutableBytes { (raw) throws(BlockError) in
                            try top.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<count]), at: offset)
                        }
                        for index in 0..<count { new[index] = 0 }
                        if let backing = newBacking?.node, offset < backing.length {
                            let available = Int(min(UInt64(count), backing.length - offset))
                            try new.withMutableBytes { (raw) throws(BlockError) in
                                try backing.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<available]), at: offset)
                            }
                        }
                        if old[0..<count] != new[0..<count] {
                            try old.withMutableBytes { (raw) throws(BlockError) in
                                try top.write(UnsafeRawBufferPointer(rebasing: raw[0..<count]), at: offset, fua: false)
                            }
                        }
                        offset += UInt64(count)
                    }
                }
                position = end
            }
            try top.flush()
        } catch {
            throw ImageToolError(error, path)
        }
    }
}
