import BlockCore

extension QedDriver {
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

    /// Writes each run: data runs in place, others into newly allocated clusters (`allocation` is held
    /// for those).
    private func writeRuns(_ runs: [Segment], _ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(BlockError) {
        for run in runs {
            let start = Int(run.offset - offset)
            let payload = UnsafeRawBufferPointer(rebasing: buffer[start..<start + run.length])
            if case .data(let host) = run.state {
                guard host + UInt64(run.length) <= file.length else {
                    throw .io("qed: data cluster at \(host) lies past the end of the image file")
                }
                file.debugEvent(.writeAio)
                try file.write(payload, at: host, fua: false)
            } else {
                try allocateRun(run, payload)
            }
        }
    }

    /// Allocates clusters for an unallocated or zero run, fills them with the payload and the old
    /// contents around it, then points the tables at them.
    private func allocateRun(_ run: Segment, _ payload: UnsafeRawBufferPointer) throws(BlockError) {
        let mask = UInt64(clusterSize - 1)
        let first = run.offset >> UInt64(clusterBits)
        let last = (run.offset + UInt64(run.length) - 1) >> UInt64(clusterBits)
        let count = Int(last - first + 1)
        let clusterStart = first << UInt64(clusterBits)
        let host = fileEnd
        if payload.count == count * clusterSize {
            try file.resize(to: host + UInt64(payload.count))
            file.debugEvent(.writeAio)
            try file.write(payload, at: host, fua: false)
        } else {
            var whole = [UInt8](repeating: 0, count: count * clusterSize)
            try whole.withMutableBytes { (raw) throws(BlockError) in
                let head = Int(run.offset & mask)
                let tail = raw.count - head - payload.count
                if run.state == .unallocated {
                    file.debugEvent(.cowRead)
                    if head > 0 { try readBacking(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<head]), at: clusterStart) }
                    if tail > 0 {
                        try readBacking(into: UnsafeMutableRawBufferPointer(rebasing: raw[(raw.count - tail)...]),
                                        at: clusterStart + UInt64(raw.count - tail))
                    }
                }
                UnsafeMutableRawBufferPointer(rebasing: raw[head..<head + payload.count]).copyMemory(from: payload)
                try file.resize(to: host + UInt64(raw.count))
                file.debugEvent(.cowWrite)
                try file.write(UnsafeRawBufferPointer(raw), at: host, fua: false)
            }
        }
        fileEnd = host + UInt64(count * clusterSize)
        try setEntries(from: first, (0..<count).map { host + UInt64($0 * clusterSize) })
    }

    /// Stores L2 entries for consecutive guest clusters from `first`, allocating L2 tables where the
    /// L1 table has none; `allocation` is held.
    func setEntries(from first: UInt64, _ values: [UInt64]) throws(BlockError) {
        let perTable = 1 << l2Bits
        var index = 0
        while index < values.count {
            let cluster = first + UInt64(index)
            let l1Index = Int(cluster >> UInt64(l2Bits))
            let l2Index = Int(cluster & UInt64(perTable - 1))
            let n = min(values.count - index, perTable - l2Index)
            tables.lock()
            guard l1Index < l1.count else {
                tables.unlock()
                throw .io("qed: guest cluster \(cluster) lies past the L1 table")
            }
            let l2Offset = l1[l1Index]
            var table: [UInt64]
            do {
                table = l2Offset == 0 ? [UInt64](repeating: 0, count: perTable) : try l2Table(at: l2Offset)
            } catch {
                tables.unlock()
                throw error
            }
            tables.unlock()
            table.replaceSubrange(l2Index..<l2Index + n, with: values[index..<index + n])
            if l2Offset == 0 {
                // A new table after the data, then the L1 entry that points at it.
                let tableOffset = fileEnd
                try writeFile(LittleEndian.bytes(table[...]), at: tableOffset)
                fileEnd += UInt64(table.count * 8)
                try writeFile(LittleEndian.bytes([tableOffset][...]), at: header.l1TableOffset + UInt64(l1Index * 8))
                tables.lock()
                if l2Cache.count >= l2CacheLimit, let victim = l2Cache.keys.first { l2Cache.removeValue(forKey: victim) }
                l2Cache[tableOffset] = table
                l1[l1Index] = tableOffset
                tables.unlock()
            } else {
                try writeFile(LittleEndian.bytes(table[l2Index..<l2Index + n]), at: l2Offset + UInt64(l2Index * 8))
                tables.lock()
                l2Cache[l2Offset] = table
                tables.unlock()
            }
            index += n
        }
    }

    public func writeZeroes(at offset: UInt64, length count: UInt64, flags: ZeroFlags) throws(BlockError) {
        let mask = UInt64(clusterSize - 1)
        let alignedStart = (offset + mask) & ~mask
        let alignedEnd = (offset + count) & ~mask
        if alignedStart >= alignedEnd || offset != alignedStart || offset + count != alignedEnd {
            guard !flags.contains(.fastOnly) else { throw .notSupported("qed: zero-write not aligned to clusters") }
        }
        guard alignedStart < alignedEnd else {
            try writeZeroBuffers(at: offset, length: count)
            return
        }
        if offset < alignedStart { try writeZeroBuffers(at: offset, length: alignedStart - offset) }
        allocation.lock()
        do {
            for run in try segments(at: alignedStart, length: Int(alignedEnd - alignedStart)) {
                switch run.state {
                case .data(let host):
                    try file.writeZeroes(at: host, length: UInt64(run.length), flags: flags.subtracting(.fua))
                case .zero:
                    break
                case .unallocated:
                    let n = run.length >> clusterBits
                    try setEntries(from: run.offset >> UInt64(clusterBits), [UInt64](repeating: QedHeader.zeroCluster, count: n))
                }
            }
        } catch {
            allocation.unlock()
            throw error
        }
        allocation.unlock()
        if alignedEnd < offset + count { try writeZeroBuffers(at: alignedEnd, length: offset + count - alignedEnd) }
    }

    /// Writes zero buffers over a part of a cluster.
    private func writeZeroBuffers(at offset: UInt64, length count: UInt64) throws(BlockError) {
        let zeroes = [UInt8](repeating: 0, count: Int(count))
        try zeroes.withBytes { (raw) throws(BlockError) in try write(raw, at: offset, fua: false) }
    }

    public func resize(to newLength: UInt64) throws(BlockError) {
        guard !readOnly else { throw .notPermitted("the image is read-only") }
        allocation.lock()
        defer { allocation.unlock() }
        var header = self.header
        guard newLength >= header.imageSize else { throw .notSupported("qed: images cannot be shrunk") }
        guard newLength % 512 == 0, newLength <= header.maxImageSize else {
            throw .invalid("qed: a size of \(newLength) bytes is out of range (at most \(header.maxImageSize))")
        }
        header.imageSize = newLength
        try writeFile(header.serialized(), at: 0)
        try file.flush()
        tables.lock()
        headerState = header
        tables.unlock()
        size.store(newLength, ordering: .relaxed)
    }
}
