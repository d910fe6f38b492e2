import BlockCore

extension QcowDriver {
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        guard buffer.count > 0 else { return }
        let runs = try segments(at: offset, length: buffer.count)
        if runs.allSatisfy({ if case .data = $0.state { return true } else { return false } }) {
            try writeRuns(runs, buffer, at: offset)
            return
        }
        allocation.lock()
        defer { allocation.unlock() }
        // Looked up again: another writer may have allocated these clusters meanwhile.
        try writeRuns(try segments(at: offset, length: buffer.count), buffer, at: offset)
    }

    private func writeRuns(_ runs: [Segment], _ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(BlockError) {
        for run in runs {
            let start = Int(run.offset - offset)
            let payload = UnsafeRawBufferPointer(rebasing: buffer[start..<start + run.length])
            if case .data(let host) = run.state {
                guard host + UInt64(run.length) <= file.length else {
                    throw .io("qcow: data cluster at \(host) lies past the end of the image file")
                }
                file.debugEvent(.writeAio)
                try file.write(payload, at: host, fua: false)
                continue
            }
            // Split at L2 table boundaries: each piece may need its own new table.
            var done = 0
            let perTable = UInt64(clusterSize) << UInt64(l2Bits)
            while done < run.length {
                let position = run.offset + UInt64(done)
                let count = Int(min(UInt64(run.length - done), perTable - position % perTable))
                try allocatePiece(Segment(offset: position, length: count, state: run.state),
                                  UnsafeRawBufferPointer(rebasing: payload[done..<done + count]))
                done += count
            }
        }
    }

    private func alignedEnd() -> UInt64 {
        let mask = UInt64(clusterSize - 1)
        return (fileEnd + mask) & ~mask
    }

    /// Allocates clusters (and their L2 table when missing, before them in the file, where QEMU puts
    /// it) for a piece within one L2 table, fills them with the payload and the old contents around
    /// it, then points the tables at them; `allocation` is held.
    private func allocatePiece(_ piece: Segment, _ payload: UnsafeRawBufferPointer) throws(BlockError) {
        let mask = UInt64(clusterSize - 1)
        let first = piece.offset >> UInt64(clusterBits)
        let last = (piece.offset + UInt64(piece.length) - 1) >> UInt64(clusterBits)
        let count = Int(last - first + 1)
        let l1Index = Int(first >> UInt64(l2Bits))
        tables.lock()
        let l1Count = l1.count
        let l2Offset = l1Index < l1Count ? l1[l1Index] : 0
        tables.unlock()
        guard l1Index < l1Count else { throw .io("qcow: guest cluster \(first) lies past the L1 table") }
        var newTable: UInt64?
        if l2Offset == 0 {
            newTable = alignedEnd()
            fileEnd = newTable! + UInt64(header.l2Entries * 8)
        }
        let host = alignedEnd()
        var whole = [UInt8](repeating: 0, count: count * clusterSize)
        try whole.withMutableBytes { (raw) throws(BlockError) in
            let head = Int(piece.offset & mask)
            let tail = raw.count - head - payload.count
            if head > 0 || tail > 0 {
                file.debugEvent(.cowRead)
                // Old contents of the first and last cluster, where the payload does not cover them.
                for cluster in Set([first, last]) {
                    let at = Int(cluster - first) * clusterSize
                    let target = UnsafeMutableRawBufferPointer(rebasing: raw[at..<at + clusterSize])
                    tables.lock()
                    let state: ClusterState
                    do throws(BlockError) { state = try self.state(of: cluster) } catch { tables.unlock(); throw error }
                    tables.unlock()
                    try readRun(Segment(offset: cluster << UInt64(clusterBits), length: clusterSize, state: state), into: target)
                }
            }
            UnsafeMutableRawBufferPointer(rebasing: raw[head..<head + payload.count]).copyMemory(from: payload)
            try file.resize(to: host + UInt64(raw.count))
            file.debugEvent(.writeAio)
            try file.write(UnsafeRawBufferPointer(raw), at: host, fua: false)
        }
        fileEnd = host + UInt64(count * clusterSize)
        let l2Index = Int(first & UInt64((1 << l2Bits) - 1))
        let values = (0..<count).map { host + UInt64($0 * clusterSize) }
        if let newTable {
            var table = [UInt64](repeating: 0, count: header.l2Entries)
            table.replaceSubrange(l2Index..<l2Index + count, with: values)
            try writeFile(Qcow2Bytes.bytes(table), at: newTable)
            try writeFile(Qcow2Bytes.bytes([newTable]), at: header.l1TableOffset + UInt64(l1Index * 8))
            tables.lock()
            if l2Cache.count >= l2CacheLimit, let victim = l2Cache.keys.first { l2Cache.removeValue(forKey: victim) }
            l2Cache[newTable] = table
            l1[l1Index] = newTable
            tables.unlock()
        } else {
            tables.lock()
            var table: [UInt64]
            do throws(BlockError) { table = try l2Table(at: l2Offset) } catch { tables.unlock(); throw error }
            tables.unlock()
            table.replaceSubrange(l2Index..<l2Index + count, with: values)
            try writeFile(Qcow2Bytes.bytes(Array(values)), at: l2Offset + UInt64(l2Index * 8))
            tables.lock()
            l2Cache[l2Offset] = table
            tables.unlock()
        }
    }

    /// Writes bytes into the image file, growing it when they end past its end.
    func writeFile(_ bytes: [UInt8], at offset: UInt64) throws(BlockError) {
        if offset + UInt64(bytes.count) > file.length { try file.resize(to: offset + UInt64(bytes.count)) }
        try bytes.withBytes { (raw) throws(BlockError) in try file.write(raw, at: offset, fua: false) }
    }
}
