/// A driver whose children can be swapped while it runs: the pivot of a mirror with `replaces`
/// puts the mirror's target where a child (a quorum's) was.
public protocol ChildReplacing: BlockDriver {
    /// Puts `new` in place of the child `old`; false (nothing changes) when `old` is not a child.
    func replaceChild(_ old: BlockNode, with new: BlockNode) -> Bool
}

extension BlockNode {
    /// Puts `new` in place of the child `old` in the driver and in the graph's edges; false when
    /// the driver cannot or `old` is not its child.
    public func replaceChild(_ old: BlockNode, with new: BlockNode) -> Bool {
        guard let driver = driver as? any ChildReplacing, let role = children.first(where: { $0.node === old })?.role,
              driver.replaceChild(old, with: new) else { return false }
        setChild(role, to: new)
        return true
    }
}
