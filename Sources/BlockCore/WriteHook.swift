/// A write-like request as a write hook sees it.
public enum HookedWrite {
    /// A write of these bytes.
    case data(UnsafeRawBufferPointer)
    /// A zero-write.
    case zeroes
    /// A discard.
    case discard
}

/// Code a block job puts around every write, zero-write and discard that reaches a node, whatever
/// path it came by (QEMU's write notifiers and the copy-before-write / mirror-top filters): the
/// job tracks what changes (mirror), saves old data first (backup) or keeps clients and itself
/// off the same clusters (stream). Installed with `BlockNode.installWriteHook`; while none is, a
/// write pays nothing more than the node's policy-bits branch.
public protocol WriteHook: AnyObject, Sendable {
    /// Runs `perform` (the request itself, with the node's policies) for a request of `length`
    /// bytes at `offset`, doing the hook's work before and after it. Must call `perform` exactly
    /// once unless it throws before; an error thrown is the request's.
    func around(
        _ node: BlockNode, _ request: HookedWrite, at offset: UInt64, length: UInt64,
        perform: () throws(BlockError) -> Void
    ) throws(BlockError)
}
