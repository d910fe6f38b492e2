import BlockCore

extension Qcow2Driver {
    /// Writes one whole guest cluster compressed (as `convert -c` does); a cluster that does not shrink
    /// is written normally. `offset` is cluster aligned; the image's partial last cluster may be short.
    public func writeCompressed(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(BlockError) {
        guard offset & UInt64(clusterSize - 1) == 0, buffer.count <= clusterSize,
              buffer.count == clusterSize || offset + UInt64(buffer.count) == length else {
            throw .invalid("qcow2: compressed writes take one whole cluster")
        }
        var whole = [UInt8](repeating: 0, count: clusterSize)
        whole.withUnsafeMutableBytes { $0.copyMemory(from: buffer) }
        guard let packed = whole.withUnsafeBytes({ Qcow2Compression.deflate($0) }) else {
            try write(buffer, at: offset, fua: false)
            return
        }
        let cluster = offset >> clusterBits
        lock.lock()
        defer {
            lock.broadcast()
            lock.unlock()
        }
        guard !meta.corrupt else { throw .io("qcow2: the image is marked corrupt; writes are refused") }
        let start = try placeCompressed(packed.count)
        file.debugEvent(.writeCompressed)
        try meta.writeBytes(packed, at: start)
        let offsetBits = 62 - (meta.clusterBits - 8)
        let sectors = (start + UInt64(packed.count) - 1) / 512 - start / 512
        try meta.replaceEntry(cluster, with: Qcow2Metadata.compressedFlag | (sectors << UInt64(offsetBits)) | start)
    }

    /// Host bytes for compressed data: packed after the previous compressed cluster when it fits in
    /// that host cluster (which then counts one more reference), else in newly allocated clusters.
    private func placeCompressed(_ count: Int) throws(BlockError) -> UInt64 {
        let size = UInt64(clusterSize)
        if let cursor = meta.compressedCursor, cursor % size != 0, size - cursor % size >= UInt64(count) {
            let host = cursor >> clusterBits
            try meta.setRefcount(host, try meta.refcount(host) + 1)
            meta.compressedCursor = cursor + UInt64(count)
            return cursor
        }
        let clusters = (count + clusterSize - 1) / clusterSize
        let start = try meta.allocate(clusters)
        try meta.checkOverlap(start, count: clusters)
        meta.compressedCursor = start + UInt64(count)
        return start
    }
}
