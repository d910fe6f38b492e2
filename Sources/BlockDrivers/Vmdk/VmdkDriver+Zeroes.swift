import BlockCore

extension VmdkDriver {
    /// Zero-writes: whole grains of sparse extents with the zeroed-grain feature get the zeroed entry,
    /// flat extents pass the request to their file, the rest is written as zero bytes (unless only a
    /// fast zero-write is allowed, which then fails before anything is changed).
    public func writeZeroes(at offset: UInt64, length count: UInt64, flags: ZeroFlags) throws(BlockError) {
        guard !readOnly else { throw .notPermitted("vmdk: the image is read-only") }
        if flags.contains(.fastOnly) {
            try forEachPiece(at: offset, length: count) { (extent, position, length, whole) throws(BlockError) in
                if case .flat = extent.kind { return }
                guard whole else { throw .notSupported("vmdk: no fast zero-write for part of a grain") }
            }
        }
        try forEachPiece(at: offset, length: count) { (extent, position, length, whole) throws(BlockError) in
            if case .flat(let base) = extent.kind {
                try growFlat(extent.file!, to: base + position - extent.start + length)
                try extent.file!.writeZeroes(at: base + position - extent.start, length: length, flags: flags.subtracting(.fua))
            } else if whole {
                let index = (position - extent.start) / extent.grainSize
                lock.lock()
                defer { lock.unlock() }
                if try extent.grain(index) != .zeroed { try extent.setEntry(index, to: 1) }
            } else {
                try writeZeroBytes(at: position, length: length)
            }
        }
        try updateCID()
    }

    /// Calls `body` for each piece of a range: a flat extent's part, a whole grain that can be marked
    /// zeroed (`whole`), or a part that must be written as bytes.
    private func forEachPiece(
        at offset: UInt64, length count: UInt64,
        _ body: (VmdkExtent, UInt64, UInt64, Bool) throws(BlockError) -> Void
    ) throws(BlockError) {
        var position = offset
        let end = offset + count
        while position < end {
            let extent = try findExtent(at: position)
            var length = min(end - position, extent.end - position)
            var whole = false
            if case .sparse = extent.kind {
                let within = (position - extent.start) % extent.grainSize
                length = min(length, extent.grainSize - within)
                whole = extent.zeroGrain && !extent.compressed && within == 0 && length == extent.grainSize
            }
            if case .zero = extent.kind { throw .io("vmdk: a ZERO extent cannot be written") }
            try body(extent, position, length, whole)
            position += length
        }
    }

    private func writeZeroBytes(at offset: UInt64, length: UInt64) throws(BlockError) {
        let zeroes = [UInt8](repeating: 0, count: Int(length))
        try zeroes.withBytes { (raw) throws(BlockError) in try write(raw, at: offset, fua: false) }
    }
}
