import BlockCore
import BlockDrivers

/// One entry of `map` (MapEntry in the schema).
public struct MapEntry: Sendable, Equatable {
    /// Guest offset.
    public var start: UInt64
    /// Bytes covered.
    public var length: UInt64
    /// The layer of the backing chain the data comes from (0: the image itself).
    public var depth: Int
    /// True when some layer defines the range.
    public var present: Bool
    /// True when the range reads as zeroes.
    public var zero: Bool
    /// True when the range is stored as data.
    public var data: Bool
    /// The range's offset in the file of the layer it comes from, when known.
    public var offset: UInt64?
    /// The file of that layer.
    public var filename: String

    /// True when `next` continues this entry with the same state.
    func continues(with next: MapEntry) -> Bool {
        guard depth == next.depth, present == next.present, zero == next.zero, data == next.data, filename == next.filename,
              start + length == next.start else { return false }
        switch (offset, next.offset) {
        case (nil, nil): return true
        case (let mine?, let theirs?): return mine + length == theirs
        default: return false
        }
    }
}

/// `blockimg map`: how the image's guest ranges are stored.
public struct MapCommand: Sendable {
    /// The image.
    public var path: String
    /// `-f`, when given.
    public var format: String?
    /// `--start-offset`.
    public var startOffset: UInt64
    /// `--max-length`.
    public var maxLength: UInt64?

    /// Describes a map request.
    public init(path: String, format: String?, startOffset: UInt64 = 0, maxLength: UInt64? = nil) {
        self.path = path
        self.format = format
        self.startOffset = startOffset
        self.maxLength = maxLength
    }

    /// The merged entries over the requested range.
    public func entries() throws(ImageToolError) -> [MapEntry] {
        let image = try ImageFiles.open(path, format: format, readOnly: true)
        defer { image.close() }
        var layers: [(node: BlockNode, file: String, raw: Bool)] = []
        var current: BlockNode? = image.node
        while let node = current {
            let file = node.children.first { $0.role == "file" }?.node.driver.filename ?? node.driver.filename
            layers.append((node, file, node.driver.driverName == "raw"))
            current = node.children.first { $0.role == "backing" }?.node
        }
        let end = min(image.node.length, maxLength.map { startOffset + $0 } ?? UInt64.max)
        var result: [MapEntry] = []
        var position = min(startOffset, end)
        while position < end {
            let extents: [Extent]
            do { extents = try image.node.blockStatus(at: position, length: end - position) } catch { throw ImageToolError(error, path) }
            guard !extents.isEmpty else { break }
            for extent in extents where extent.length > 0 {
                let length = min(extent.length, end - position)
                var depth = extent.depth ?? layers.count - 1
                depth = min(depth, layers.count - 1)
                let layer = layers[depth]
                // A raw layer defines every byte: its holes are present zeroes at their own offset.
                let present = extent.depth != nil || layer.raw
                var offset = extent.hostOffset
                if layer.raw && depth == 0 && offset == nil { offset = position }
                var pieces = [(length: length, offset: offset)]
                if depth > 0 && !extent.hole && offset == nil {
                    // Data from a backing layer: ask that layer where it keeps it.
                    pieces = try hostOffsets(layer.node, at: position, length: length)
                }
                var start = position
                for piece in pieces {
                    let entry = MapEntry(
                        start: start, length: piece.length, depth: depth, present: present, zero: extent.zero, data: !extent.hole,
                        offset: (!extent.hole || layer.raw || extent.hostOffset != nil) ? piece.offset : nil, filename: layer.file)
                    if let last = result.last, last.continues(with: entry) {
                        result[result.count - 1].length += entry.length
                    } else {
                        result.append(entry)
                    }
                    start += piece.length
                }
                position += length
                if position >= end { break }
            }
        }
        return result
    }

    /// The file offsets of a range that a layer holds as data.
    private func hostOffsets(_ node: BlockNode, at offset: UInt64, length: UInt64) throws(ImageToolError) -> [(length: UInt64, offset: UInt64?)] {
        var pieces: [(length: UInt64, offset: UInt64?)] = []
        var position = offset
        while position < offset + length {
            let extents: [Extent]
            do { extents = try node.blockStatus(at: position, length: offset + length - position) } catch { throw ImageToolError(error, path) }
            guard !extents.isEmpty else { break }
            for extent in extents where position < offset + length {
                let count = min(extent.length, offset + length - position)
                pieces.append((count, extent.hostOffset))
                position += count
            }
        }
        if position < offset + length { pieces.append((offset + length - position, nil)) }
        return pieces
    }

    /// `--output=json`, laid out as qemu-img lays it out.
    public func json() throws(ImageToolError) -> String {
        let lines = try entries().map { entry in
            var line = "{ \"start\": \(entry.start), \"length\": \(entry.length), \"depth\": \(entry.depth), "
                + "\"present\": \(entry.present), \"zero\": \(entry.zero), \"data\": \(entry.data)"
            if let offset = entry.offset { line += ", \"offset\": \(offset)" }
            return line + "}"
        }
        return "[" + lines.joined(separator: ",\n") + "]"
    }

    /// `--output=human`: the ranges stored as data, with their file offsets.
    public func human() throws(ImageToolError) -> String {
        func hex(_ value: UInt64) -> String {
            let text = value == 0 ? "0" : "0x" + String(value, radix: 16)
            return text.padded(to: 16)
        }
        var lines = ["Offset          Length          Mapped to       File"]
        for entry in try entries() where entry.data && entry.present {
            guard let offset = entry.offset else { continue }
            lines.append(hex(entry.start) + hex(entry.length) + hex(offset) + entry.filename)
        }
        return lines.joined(separator: "\n")
    }
}

extension String {
    func padded(to width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}
