import BlockCore

/// Where in a backing chain a range's data lies, for stream and commit: the chunks whose data
/// comes from the layers `0..<depthLimit` below (and including) a node.
enum ChainCopy {
    /// Calls `body` for each run of `node`'s bytes found at a depth in `range` (0 is the node
    /// itself), with whether the run reads as zeroes.
    static func forEachRun(
        of node: BlockNode, depths: Range<Int>, chunk: UInt64,
        _ body: (Range<UInt64>, Bool) throws(JobError) -> Void
    ) throws(JobError) {
        var position: UInt64 = 0
        let length = node.length
        while position < length {
            let extents: [Extent]
            do {
                extents = try node.blockStatus(at: position, length: min(length - position, 64 << 20))
            } catch {
                throw JobError(error.message)
            }
            guard let first = extents.first, first.length > 0 else { break }
            let end = min(length, position + first.length)
            if let depth = first.depth, depths.contains(depth) {
                var start = position
                while start < end {
                    let stop = min(end, start + chunk)
                    try body(start..<stop, first.zero)
                    start = stop
                }
            }
            position = end
        }
    }
}
