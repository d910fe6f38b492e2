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
                for extent in try ImageBacking.status(of: backing, at: run.offset, length: UInt64(run.length)) { extents.appendMerging(extent) }
            }
        }
        return extents
    }


    public func resize(to newLength: UInt64) throws(BlockError) {
        guard newLength <= Qcow2Header.maxSize else {
            throw .invalid("qcow2: a size of \(newLength) bytes is out of range (at most \(Qcow2Header.maxSize))")
        }
        lock.lock()
        defer { lock.unlock() }
        guard !meta.corrupt else { throw .io("qcow2: the image is marked corrupt") }
        let old = meta.header.size
        if newLength < old, let cluster = try firstMappedCluster(from: (newLength + UInt64(clusterSize) - 1) >> clusterBits) {
            throw .notSupported("qcow2: cannot shrink to \(newLength) bytes: guest cluster \(cluster) past the new end is in use")
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

    /// The first guest cluster at or after `first` that has an L2 entry; L2 tables that are absent are
    /// skipped whole, so the walk is bounded by the L1 table. The lock is held.
    private func firstMappedCluster(from first: UInt64) throws(BlockError) -> UInt64? {
        let perTable = UInt64(meta.l2Entries)
        var cluster = first
        while cluster / perTable < UInt64(meta.l1.count) {
            let l1Index = Int(cluster / perTable)
            guard meta.l1[l1Index] & Qcow2Metadata.offsetMask != 0 else {
                cluster = UInt64(l1Index + 1) * perTable
                continue
            }
            if try meta.l2Entry(cluster) != 0 { return cluster }
            cluster += 1
        }
        return nil
    }

    /// Drops clean cached tables every `seconds` (`cache-clean-interval`; 0 never), to give memory back when idle.
}
