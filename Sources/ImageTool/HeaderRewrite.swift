import BlockCore
import BlockDrivers

/// Rewrites the backing file name and format in a closed qcow2 image's header.
enum HeaderRewrite {
    /// Stores `backingFile` (nil: none) and its format in the header of the qcow2 image at `path`.
    static func setBacking(_ path: String, backingFile: String?, backingFormat: String?) throws(ImageToolError) {
        let image = try ImageFiles.open(path, format: "qcow2", readOnly: false, withBacking: false)
        let file = image.file
        defer { image.close() }
        do throws(BlockError) {
            guard var header = image.qcow2Header else { throw BlockError.invalid("not a qcow2 image") }
            let oldLength = header.serialized().count
            header.backingFile = backingFile
            header.backingFormat = backingFile == nil ? nil : backingFormat
            var bytes = header.serialized()
            guard bytes.count <= header.clusterSize else {
                throw BlockError.invalid("the backing file name does not fit in the header cluster")
            }
            // Clear what the old, longer header left behind.
            if bytes.count < oldLength { bytes += [UInt8](repeating: 0, count: oldLength - bytes.count) }
            try bytes.withMutableBytes { (raw) throws(BlockError) in try file.write(UnsafeRawBufferPointer(raw), at: 0, fua: false) }
            try file.flush()
        } catch {
            throw ImageToolError(error, path)
        }
    }
}
