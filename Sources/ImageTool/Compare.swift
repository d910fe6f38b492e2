import BlockCore

/// `blockimg compare`: whether two images read the same (exit 0), differ (1), or could not be compared (2).
public struct CompareCommand: Sendable {
    /// The first image.
    public var first: String
    /// The second image.
    public var second: String
    /// `-f`: the first image's format.
    public var firstFormat: String?
    /// `-F`: the second image's format.
    public var secondFormat: String?
    /// `-s`: sizes must match too.
    public var strict: Bool

    /// Describes a compare request.
    public init(first: String, second: String, firstFormat: String?, secondFormat: String?, strict: Bool) {
        self.first = first
        self.second = second
        self.firstFormat = firstFormat
        self.secondFormat = secondFormat
        self.strict = strict
    }

    /// The verdict: the lines to print and the exit code. Errors carry exit code 2.
    public func run() throws(ImageToolError) -> (output: [String], exitCode: Int32) {
        do {
            let one = try ImageFiles.open(first, format: firstFormat, readOnly: true)
            defer { one.close() }
            let two = try ImageFiles.open(second, format: secondFormat, readOnly: true)
            defer { two.close() }
            var lines: [String] = []
            if one.node.length != two.node.length {
                if strict { return (["Strict mode: Image size mismatch!"], 1) }
                lines.append("Warning: Image size mismatch!")
            }
            let common = min(one.node.length, two.node.length)
            if let offset = try firstDifference(one.node, two.node, from: 0, to: common) {
                return (lines + ["Content mismatch at offset \(offset / 512 * 512)!"], 1)
            }
            let longer = one.node.length > two.node.length ? one.node : two.node
            if let offset = try firstNonZero(longer, from: common, to: longer.length) {
                return (lines + ["Content mismatch at offset \(offset / 512 * 512)!"], 1)
            }
            return (lines + ["Images are identical."], 0)
        } catch {
            throw ImageToolError(error.message, exitCode: 2)
        }
    }

    private static let chunk = 1 << 20

    private func firstDifference(_ one: BlockNode, _ two: BlockNode, from start: UInt64, to end: UInt64) throws(ImageToolError) -> UInt64? {
        var left = [UInt8](repeating: 0, count: Self.chunk)
        var right = [UInt8](repeating: 0, count: Self.chunk)
        var position = start
        while position < end {
            let count = Int(min(UInt64(Self.chunk), end - position))
            try read(one, into: &left, count: count, at: position)
            try read(two, into: &right, count: count, at: position)
            if let index = (0..<count).first(where: { left[$0] != right[$0] }) { return position + UInt64(index) }
            position += UInt64(count)
        }
        return nil
    }

    private func firstNonZero(_ node: BlockNode, from start: UInt64, to end: UInt64) throws(ImageToolError) -> UInt64? {
        var buffer = [UInt8](repeating: 0, count: Self.chunk)
        var position = start
        while position < end {
            let count = Int(min(UInt64(Self.chunk), end - position))
            try read(node, into: &buffer, count: count, at: position)
            if let index = (0..<count).first(where: { buffer[$0] != 0 }) { return position + UInt64(index) }
            position += UInt64(count)
        }
        return nil
    }

    private func read(_ node: BlockNode, into buffer: inout [UInt8], count: Int, at offset: UInt64) throws(ImageToolError) {
        do {
            try buffer.withMutableBytes { (raw) throws(BlockError) in
                try node.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<count]), at: offset)
            }
        } catch {
            throw ImageToolError(error, node.driver.filename)
        }
    }
}
