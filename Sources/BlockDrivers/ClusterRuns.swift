import BlockCore

/// The state of one guest cluster of an image format whose tables map clusters (qcow, qed).
protocol ClusterMapping {
    /// The state `bytes` into the cluster (a state naming a host offset moves it along).
    func advanced(by bytes: UInt64) -> Self
    /// True when `next` carries on a run of `length` bytes in this state without a seam (the
    /// same kind, and for data the next host byte).
    func continues(length: Int, with next: Self) -> Bool
}

/// A run of guest bytes in one cluster state (data runs are contiguous in the file).
struct ClusterRun<State: ClusterMapping> {
    var offset: UInt64
    var length: Int
    var state: State
}

/// Splitting a guest range into runs of one cluster state.
enum ClusterRuns {
    /// The runs covering `length` bytes at `offset`, asking `state` for each guest cluster.
    static func split<State: ClusterMapping>(
        at offset: UInt64, length: Int, clusterBits: Int, state: (UInt64) throws(BlockError) -> State
    ) throws(BlockError) -> [ClusterRun<State>] {
        var result: [ClusterRun<State>] = []
        var position = offset
        let end = offset + UInt64(length)
        let mask = (UInt64(1) << UInt64(clusterBits)) - 1
        while position < end {
            let intra = position & mask
            let chunk = Int(min(end - position, mask + 1 - intra))
            let current = try state(position >> UInt64(clusterBits)).advanced(by: intra)
            if let last = result.last, last.state.continues(length: last.length, with: current) {
                result[result.count - 1].length += chunk
            } else {
                result.append(ClusterRun(offset: position, length: chunk, state: current))
            }
            position += UInt64(chunk)
        }
        return result
    }
}
