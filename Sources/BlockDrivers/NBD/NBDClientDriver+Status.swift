import BlockCore
import CLibNBD

/// Block status: `base:allocation` (holes and zeroes) and, when the server offers it,
/// `qemu:allocation-depth` (in which layer of the remote's chain a range lives), so that sparseness
/// and zero detection survive a chain of servers.
extension NBDClientDriver {
    /// Most bytes asked about in one command (a 32-bit length on the wire).
    static let maxStatusLength: UInt64 = 1 << 31

    public func blockStatus(at offset: UInt64, length: UInt64) throws(BlockError) -> [Extent] {
        guard features.blockStatus else { return [.data(length)] }
        let asked = min(length, NBDClientDriver.maxStatusLength)
        let request = try perform(.blockStatus, at: offset, length: asked)
        let extents = NBDClientDriver.extents(allocation: request.allocation, depth: hasAllocationDepth && !request.depth.isEmpty ? request.depth : nil, limit: asked)
        guard !extents.isEmpty else { throw .io("nbd block status at \(offset)+\(asked) on \(options.uri): the server described no extent") }
        return extents
    }

    /// Combines the two contexts' extents into the node's, clipped to `limit` bytes.
    static func extents(allocation: [(length: UInt64, flags: UInt32)], depth: [(length: UInt64, depth: UInt32)]?, limit: UInt64) -> [Extent] {
        var result: [Extent] = []
        var position: UInt64 = 0
        var allocationIndex = 0, allocationEnd: UInt64 = 0
        var depthIndex = 0, depthEnd: UInt64 = 0
        if let first = allocation.first { allocationEnd = first.length }
        if let first = depth?.first { depthEnd = first.length }
        while position < limit, allocationIndex < allocation.count {
            let flags = allocation[allocationIndex].flags
            var end = min(allocationEnd, limit)
            var layer: Int? = 0
            if let depth {
                guard depthIndex < depth.count else { break }
                end = min(end, depthEnd)
                let value = depth[depthIndex].depth
                layer = value == 0 ? nil : Int(value) - 1
            }
            guard end > position else { break }
            let hole = flags & UInt32(LIBNBD_STATE_HOLE) != 0
            let zero = flags & UInt32(LIBNBD_STATE_ZERO) != 0
            result.appendMerging(Extent(length: end - position, zero: zero, hole: hole, depth: layer))
            position = end
            if position >= allocationEnd {
                allocationIndex += 1
                if allocationIndex < allocation.count { allocationEnd += allocation[allocationIndex].length }
            }
            if let depth, position >= depthEnd {
                depthIndex += 1
                if depthIndex < depth.count { depthEnd += depth[depthIndex].length }
            }
        }
        return result
    }
}
