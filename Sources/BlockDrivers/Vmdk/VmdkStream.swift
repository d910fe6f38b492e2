import BlockCore
import CZlib

/// Compressed grains of stream-optimized extents: a grain marker (the grain's first guest sector,
/// 8 bytes, and the compressed size, 4 bytes) followed by the zlib stream, padded to a sector.
extension VmdkDriver {
    /// Size of a grain marker's fields before the compressed data.
    static let markerSize = 12

    /// Reads part of a compressed grain.
    func readCompressed(_ extent: VmdkExtent, host: UInt64, within: Int, into buffer: UnsafeMutableRawBufferPointer) throws(BlockError) {
        let file = extent.file!
        let grainBytes = Int(extent.grainSize)
        guard host < file.length else { throw .io("vmdk: compressed grain at \(host) lies past the end of '\(file.driver.filename)'") }
        // The marker and data may be longer than a grain (incompressible data): read up to two grains.
        let available = Int(min(UInt64(grainBytes * 2), file.length - host))
        var stored = [UInt8](repeating: 0, count: available)
        file.debugEvent(.readCompressed)
        try stored.withMutableBytes { (raw) throws(BlockError) in try file.read(into: raw, at: host) }
        var start = 0
        var size = available
        if extent.hasMarkers {
            guard available >= Self.markerSize else { throw .io("vmdk: compressed grain at \(host) is truncated") }
            size = Int(stored.withUnsafeBytes { VmdkBytes.u32($0, 8) })
            start = Self.markerSize
            guard size > 0, size <= available - start else {
                throw .io("vmdk: compressed grain at \(host) has an invalid size (\(size) bytes)")
            }
        }
        var grain = [UInt8](repeating: 0, count: grainBytes)
        var produced = uLongf(grainBytes)
        let status = grain.withUnsafeMutableBytes { out in
            stored.withUnsafeBytes { input in
                uncompress(out.baseAddress!.assumingMemoryBound(to: Bytef.self), &produced,
                           input.baseAddress!.advanced(by: start).assumingMemoryBound(to: Bytef.self), uLong(size))
            }
        }
        guard status == Z_OK else { throw .io("vmdk: compressed grain at \(host) is damaged (zlib status \(status))") }
        guard within + buffer.count <= Int(produced) else {
            throw .io("vmdk: compressed grain at \(host) holds \(produced) bytes, fewer than read")
        }
        grain.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[within..<within + buffer.count])) }
    }

    /// Writes one whole grain (or the last, shorter grain of the extent) compressed at the end of the
    /// extent's file; a grain that is allocated already cannot be written again.
    func writeCompressed(_ extent: VmdkExtent, _ data: UnsafeRawBufferPointer, at position: UInt64) throws(BlockError) {
        let inExtent = position - extent.start
        guard inExtent % extent.grainSize == 0,
              UInt64(data.count) == extent.grainSize || position + UInt64(data.count) == extent.end else {
            throw .invalid("vmdk: a streamOptimized image is written in whole grains only")
        }
        guard extent.hasMarkers else { throw .invalid("vmdk: compressed extent without grain markers cannot be written") }
        let index = inExtent / extent.grainSize
        var bound = compressBound(uLong(data.count))
        var record = [UInt8](repeating: 0, count: Self.markerSize + Int(bound))
        let status = record.withUnsafeMutableBytes { out in
            compress2(out.baseAddress!.advanced(by: Self.markerSize).assumingMemoryBound(to: Bytef.self), &bound,
                      data.baseAddress!.assumingMemoryBound(to: Bytef.self), uLong(data.count), Z_DEFAULT_COMPRESSION)
        }
        guard status == Z_OK else { throw .io("vmdk: zlib could not compress a grain (status \(status))") }
        record.removeLast(record.count - Self.markerSize - Int(bound))
        VmdkBytes.put(position / 512, &record, 0)
        VmdkBytes.put(UInt32(bound), &record, 8)
        record += [UInt8](repeating: 0, count: (512 - record.count % 512) % 512)
        let file = extent.file!
        lock.lock()
        defer { lock.unlock() }
        switch try extent.grain(index) {
        case .unallocated, .zeroed: break
        default: throw .io("vmdk: Could not write to allocated cluster for streamOptimized")
        }
        let sector = try extent.takeSectors(UInt64(record.count / 512))
        file.debugEvent(.writeCompressed)
        try record.withBytes { (raw) throws(BlockError) in try file.write(raw, at: sector * 512, fua: false) }
        try extent.setEntry(index, to: UInt32(sector))
    }
}
