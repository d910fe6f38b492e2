import BlockCore
import JSON

/// `blockimg measure`: the file size a new image needs (BlockMeasureInfo).
public struct MeasureCommand: Sendable {
    /// The image to measure as if converted, or nil with `--size`.
    public var path: String?
    /// `-f`, when given.
    public var format: String?
    /// `--size`, when measuring an empty image.
    public var size: String?
    /// `-O`: the format to measure for.
    public var targetFormat: String
    /// Every `-o` argument.
    public var options: [String]

    /// Describes a measure request.
    public init(path: String?, format: String?, size: String?, targetFormat: String, options: [String]) {
        self.path = path
        self.format = format
        self.size = size
        self.targetFormat = targetFormat
        self.options = options
    }

    /// The measurement: required and fully-allocated bytes, and bitmap bytes where the source can hold bitmaps.
    public func measure() throws(ImageToolError) -> (required: UInt64, fullyAllocated: UInt64, bitmaps: UInt64?) {
        try ImageFiles.checkFormat(targetFormat)
        guard (path == nil) != (size == nil) else { throw ImageToolError("Either --size N or one filename must be specified.") }
        let parsed = try CreateOptions(options, format: targetFormat)
        var virtualSize: UInt64
        var dataBytes: ((UInt64) throws(ImageToolError) -> UInt64)? = nil
        var image: OpenedImage?
        if let size {
            guard let value = Sizes.parse(size) else { throw ImageToolError("Invalid image size specified. Must be between 0 and 9223372036854775807.") }
            virtualSize = value
        } else {
            let opened = try ImageFiles.open(path!, format: format, readOnly: true)
            image = opened
            virtualSize = opened.node.length
            dataBytes = { (cluster: UInt64) throws(ImageToolError) -> UInt64 in try Self.allocatedBytes(opened.node, cluster: cluster) }
        }
        defer { image?.close() }
        if targetFormat == "raw" {
            let rounded = (virtualSize + 511) / 512 * 512
            return (rounded, rounded, nil)
        }
        let settings = try parsed.qcow2(size: virtualSize)
        do { try settings.validate() } catch { throw ImageToolError(error.message) }
        let cluster = UInt64(settings.clusterSize)
        virtualSize = (virtualSize + cluster - 1) / cluster * cluster
        let full = Self.preallocatedSize(virtualSize, cluster: cluster, refcountBits: UInt64(settings.refcountBits))
        // Without a source, an empty image needs no data clusters; preallocation needs all of them.
        var data: UInt64 = 0
        if settings.preallocation == .full || settings.preallocation == .falloc {
            data = virtualSize
        } else if let dataBytes {
            data = try dataBytes(cluster)
        }
        let bitmaps: UInt64? = image?.format == "qcow2" && settings.version == 3 ? 0 : nil
        return (full - virtualSize + data, full, bitmaps)
    }

    /// Human output, as qemu-img prints it.
    public func human() throws(ImageToolError) -> String {
        let result = try measure()
        var lines = ["required size: \(result.required)", "fully allocated size: \(result.fullyAllocated)"]
        if let bitmaps = result.bitmaps { lines.append("bitmaps size: \(bitmaps)") }
        return lines.joined(separator: "\n")
    }

    /// `--output=json`.
    public func json() throws(ImageToolError) -> String {
        let result = try measure()
        var object: [String: JSONValue] = [
            "required": .integer(Int64(result.required)), "fully-allocated": .integer(Int64(result.fullyAllocated)),
        ]
        if let bitmaps = result.bitmaps { object["bitmaps"] = .integer(Int64(bitmaps)) }
        return JSONValue.object(object).prettyPrinted()
    }

    /// Bytes of whole clusters that hold data (zero ranges are skipped).
    static func allocatedBytes(_ node: BlockNode, cluster: UInt64) throws(ImageToolError) -> UInt64 {
        var total: UInt64 = 0
        var position: UInt64 = 0
        let size = node.length
        while position < size {
            let extents: [Extent]
            do { extents = try node.blockStatus(at: position, length: size - position) } catch { throw ImageToolError(error, node.driver.filename) }
            guard let first = extents.first, first.length > 0 else { break }
            var count = min(first.length, size - position)
            if !first.zero && !first.hole {
                // Count up to the end of the cluster the range ends in.
                count = (position + count + cluster - 1) / cluster * cluster - position
                total += position % cluster + count
            }
            position += count
        }
        return total
    }

    /// Bytes of a fully allocated qcow2 image of `size` (cluster aligned): header, L2, L1, refcounts and data.
    static func preallocatedSize(_ size: UInt64, cluster: UInt64, refcountBits: UInt64) -> UInt64 {
        let entriesPerCluster = cluster / 8
        let l2Entries = (size / cluster + entriesPerCluster - 1) / entriesPerCluster * entriesPerCluster
        let l1Entries = (l2Entries * 8 / cluster + entriesPerCluster - 1) / entriesPerCluster * entriesPerCluster
        let metadata = cluster + l2Entries * 8 + l1Entries * 8
        let clusters = (metadata + size) / cluster
        let perBlock = cluster * 8 / refcountBits
        var table: UInt64 = 0
        var blocks: UInt64 = 0
        var last: UInt64 = .max
        var total: UInt64 = 0
        repeat {
            last = total
            blocks = (clusters + table + blocks + perBlock - 1) / perBlock
            table = (blocks + entriesPerCluster - 1) / entriesPerCluster
            total = clusters + blocks + table
        } while total != last
        return metadata + (blocks + table) * cluster + size
    }
}
