import BlockCore

extension Qcow2Driver {
    /// The whole clusters inside a range (the image's partial last cluster counts as whole).
    func wholeClusters(_ offset: UInt64, _ count: UInt64) -> Range<UInt64> {
        let size = UInt64(clusterSize)
        let first = (offset + size - 1) / size
        let end = offset + count
        let last = end == length ? (end + size - 1) / size : end / size
        return first..<max(first, last)
    }

    public func writeZeroes(at offset: UInt64, length count: UInt64, flags: ZeroFlags) throws(BlockError) {
        let whole = wholeClusters(offset, count)
        let wholeStart = whole.isEmpty ? offset + count : whole.lowerBound << clusterBits
        let wholeEnd = whole.isEmpty ? offset + count : min(whole.upperBound << clusterBits, offset + count)
        if whole.isEmpty {
            try writeZeroBuffer(at: offset, length: count)
            return
        }
        if offset < wholeStart { try writeZeroBuffer(at: offset, length: wholeStart - offset) }
        if wholeEnd < offset + count { try writeZeroBuffer(at: wholeEnd, length: offset + count - wholeEnd) }
        try updateEntries(whole) { state in
            switch state {
            case .zero: return nil
            case .unallocated where self.backing == nil: return nil
            case .data(let host, true) where !flags.contains(.mayUnmap):
                return (host | Qcow2Metadata.copiedFlag | Qcow2Metadata.zeroFlag, false)
            default:
                return (Qcow2Metadata.zeroFlag, true)
            }
        }
    }

    func writeZeroBuffer(at offset: UInt64, length count: UInt64) throws(BlockError) {
        var done: UInt64 = 0
        while done < count {
            let chunk = Int(min(count - done, UInt64(ZeroBlock.size)))
            try write(UnsafeRawBufferPointer(rebasing: ZeroBlock.bytes[0..<chunk]), at: offset + done, fua: false)
            done += UInt64(chunk)
        }
    }

    public func discard(at offset: UInt64, length count: UInt64) throws(BlockError) {
        let whole = wholeClusters(offset, count)
        guard !whole.isEmpty else { return }
        let replacement: UInt64 = backing != nil && meta.header.version >= 3 ? Qcow2Metadata.zeroFlag : 0
        try updateEntries(whole) { state in
            switch state {
            case .unallocated where self.backing == nil: return nil
            case .zero(nil) where replacement == Qcow2Metadata.zeroFlag: return nil
            default: return (replacement, true)
            }
        }
    }

    /// Changes the L2 entries of whole clusters: `change` returns the new entry and whether the old
    /// clusters are released, or nil to leave the entry.
    func updateEntries(_ clusters: Range<UInt64>, _ change: (Qcow2ClusterState) -> (UInt64, Bool)?) throws(BlockError) {
        lock.lock()
        defer {
            lock.broadcast()
            lock.unlock()
        }
        guard !meta.corrupt else { throw .io("qcow2: the image is marked corrupt; writes are refused") }
        waitForInflight(clusters.lowerBound...(clusters.upperBound - 1))
        for cluster in clusters {
            let entry = try meta.l2Entry(cluster)
            guard let (newEntry, release) = change(meta.state(of: entry)) else { continue }
            if release {
                try meta.replaceEntry(cluster, with: newEntry)
            } else {
                let table = try meta.writableL2(cluster)
                table.setWord(meta.split(cluster).1, newEntry)
            }
        }
    }
}
