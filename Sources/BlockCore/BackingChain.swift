/// A driver whose node has a backing file it can change while open (qcow2): the graph change at
/// the end of a stream or commit, `blockdev-snapshot` and `change-backing-file`.
public protocol BackingChain: AnyObject {
    /// The backing node now, nil for none.
    var backingNode: BlockNode? { get }
    /// Stores `file` (nil: none) and `format` as the backing file in the image header, durably,
    /// without changing which node is read.
    func writeBackingName(_ file: String?, format: String?) throws(BlockError)
    /// Reads unallocated data from `node` (nil: zeroes) from now on. The caller keeps the node's
    /// `children` in step (`BlockNode.setChild`).
    func setBackingNode(_ node: BlockNode?)
}
