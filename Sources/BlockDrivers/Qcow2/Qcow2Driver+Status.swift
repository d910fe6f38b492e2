import BlockCore

extension Qcow2Driver {
    public func blockStatus(at offset: UInt64, length count: UInt64) throws(BlockError) -> [Extent] {
        let limit = min(count, UInt64(clusterSize) * 65536)
        lock.lock()
        let runs: [Segment]
        do {
            runs = try segments(at: offset, length: Int(limit))
        } catch {
            lock.unlock()
            throw error
        }
        lock.unlock()
        var extents: [Extent] = []
        for run in runs {
            switch run.state {
            case .data(let host, _):
                extents.appendMerging(.data(UInt64(run.length), hostOffset: host))
            case .compressed:
                extents.appendMerging(.data(UInt64(run.length)))
            case .zero(let host):
                extents.appendMerging(Extent(length: UInt64(run.length), zero: true, hole: true, depth: 0, hostOffset: host))
            case .unallocated:
                for extent in try backingStatus(at: run.offset, length: UInt64(run.length)) { extents.appendMerging(extent) }
            }
        }
        return extents
    }

    /// Block status of the backing chain for an unallocated run, one layer deeper.
    func backingStatus(at offset: UInt64, length count: UInt64) throws(BlockError) -> [Extent] {
        guard let backing, offset < backing.length else { return [.hole(count)] }
        var result: [Extent] = []
        var position = offset
        let end = offset + count
        let backingEnd = min(end, backing.length)
        while position < backingEnd {
            for var extent in try backing.blockStatus(at: position, length: backingEnd - position) {
                extent.depth = extent.depth.map { $0 + 1 }
                extent.hostOffset = nil
                result.append(extent)
                position += extent.length
            }
        }
        if backingEnd < end { result.append(.hole(end - backingEnd)) }
        return result
    }

    public func resize(to newLength: UInt64) throws(BlockError) {
        lock.lock()
        defer { lock.unlock() }
        guard !meta.corrupt else { throw .io("qcow2: the image is marked corrupt") }
        let old = meta.header.size
        if newLength < old {
            let firstDropped = (newLength + UInt64(clusterSize) - 1) >> clusterBits
            let lastCluster = (old + UInt64(clusterSize) - 1) >> clusterBits
            for cluster in firstDropped..<max(firstDropped, lastCluster) where try meta.l2Entry(cluster) != 0 {
                throw .notSupported("qcow2: cannot shrink to \(newLength) bytes: guest cluster \(cluster) past the new end is in use")
            }
        }
        try meta.writeBackAll(canFree: false)
        try meta.resizeL1(for: newLength)
        meta.header.size = newLength
        var field = [UInt8](repeating: 0, count: 8)
        field.withUnsafeMutableBytes { Qcow2Bytes.put(newLength, $0, 0) }
        try meta.writeBytes(field, at: 24)
        try file.flush()
        size.store(newLength, ordering: .relaxed)
    }

    /// Drops clean cached tables every `seconds` (`cache-clean-interval`; 0 never), to give memory back when idle.
}
