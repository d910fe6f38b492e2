import BlockCore

/// `blockimg resize`: grow or (with `--shrink`) shrink an image.
public struct ResizeCommand: Sendable {
    /// The image.
    public var path: String
    /// `-f`, when given.
    public var format: String?
    /// The size: absolute, or `+N` / `-N` relative to the current size.
    public var size: String
    /// `--shrink`: allow making the image smaller.
    public var shrink: Bool

    /// Describes a resize request.
    public init(path: String, format: String?, size: String, shrink: Bool) {
        self.path = path
        self.format = format
        self.size = size
        self.shrink = shrink
    }

    /// Resizes the image; returns "Image resized.".
    public func run() throws(ImageToolError) -> String {
        var text = Substring(size)
        let sign = text.first == "+" || text.first == "-" ? text.removeFirst() : nil
        guard let amount = Sizes.parse(String(text)) else {
            throw ImageToolError("Invalid image size specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.")
        }
        let image = try ImageFiles.open(path, format: format, readOnly: false)
        defer { image.close() }
        let current = image.node.length
        let target: UInt64
        switch sign {
        case "+": target = current + amount
        case "-":
            guard amount <= current else { throw ImageToolError("New image size must be positive") }
            target = current - amount
        default: target = amount
        }
        if target < current && !shrink {
            throw ImageToolError("Use the --shrink option to perform a shrink operation.\nwarning: Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.")
        }
        do {
            try image.node.resize(to: target)
            try image.node.flush()
        } catch {
            throw ImageToolError(error, path)
        }
        return "Image resized."
    }
}
