import BlockCore
import Dispatch

/// A hook that repeats every write reaching a node on another node, for a moment after a graph
/// change moved the devices away from it: requests that looked the old node up just before the
/// change still land where clients will read them (the overlay of a live snapshot, the target of
/// a pivot).
public final class ForwardWrites: WriteHook {
    let target: BlockNode

    /// Repeats writes on `target`.
    public init(to target: BlockNode) { self.target = target }

    public func around(
        _ node: BlockNode, _ request: HookedWrite, at offset: UInt64, length: UInt64, perform: () throws(BlockError) -> Void
    ) throws(BlockError) {
        try perform()
        switch request {
        case .data(let bytes): try target.write(bytes, at: offset, fua: false)
        case .zeroes: try target.writeZeroes(at: offset, length: length, flags: [])
        case .discard: try target.discard(at: offset, length: length)
        }
    }

    /// Installs a forwarding hook on `node` for `seconds` (when the node has no hook already).
    public static func forAMoment(from node: BlockNode, to target: BlockNode, seconds: Double = 1) {
        guard !node.readOnly else { return }
        let hook = ForwardWrites(to: target)
        guard node.installWriteHook(hook) else { return }
        DispatchQueue.global().asyncAfter(deadline: .now() + seconds) { node.removeWriteHook(hook) }
    }
}
