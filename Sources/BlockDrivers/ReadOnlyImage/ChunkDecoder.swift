import BlockCore
import CBzip2
import CZlib

/// Decompression of the chunks of read-only formats.
enum ChunkDecoder {
    /// Inflates a zlib stream (with its header) of `input` into exactly `size` bytes, or fails
    /// when the stream is damaged or does not make exactly that many bytes (`exact`) or fewer.
    static func zlib(_ input: [UInt8], size: Int, exact: Bool = true, what: String) throws(BlockError) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: size)
        var stream = z_stream()
        guard inflateInit_(&stream, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw .io("\(what): zlib could not be initialised")
        }
        defer { inflateEnd(&stream) }
        let status = input.withUnsafeBytes { source in
            output.withUnsafeMutableBytes { target in
                stream.next_in = UnsafeMutablePointer(mutating: source.baseAddress?.assumingMemoryBound(to: Bytef.self))
                stream.avail_in = uInt(source.count)
                stream.next_out = target.baseAddress?.assumingMemoryBound(to: Bytef.self)
                stream.avail_out = uInt(target.count)
                return CZlib.inflate(&stream, Z_FINISH)
            }
        }
        let produced = size - Int(stream.avail_out)
        guard status == Z_STREAM_END || (!exact && status == Z_BUF_ERROR && stream.avail_out == 0) else {
            throw .io("\(what) is damaged (zlib status \(status))")
        }
        guard !exact || produced == size else {
            throw .io("\(what) inflates to \(produced) bytes, not \(size)")
        }
        return output
    }

    /// Decompresses a bzip2 stream of `input` into exactly `size` bytes, or fails.
    static func bzip2(_ input: [UInt8], size: Int, what: String) throws(BlockError) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: size)
        var stream = bz_stream()
        guard BZ2_bzDecompressInit(&stream, 0, 0) == BZ_OK else { throw .io("\(what): bzip2 could not be initialised") }
        defer { BZ2_bzDecompressEnd(&stream) }
        let status = input.withUnsafeBytes { source in
            output.withUnsafeMutableBytes { target in
                stream.next_in = UnsafeMutablePointer(mutating: source.baseAddress?.assumingMemoryBound(to: CChar.self))
                stream.avail_in = UInt32(source.count)
                stream.next_out = target.baseAddress?.assumingMemoryBound(to: CChar.self)
                stream.avail_out = UInt32(target.count)
                return BZ2_bzDecompress(&stream)
            }
        }
        let produced = UInt64(stream.total_out_hi32) << 32 | UInt64(stream.total_out_lo32)
        guard status == BZ_STREAM_END else { throw .io("\(what) is damaged (bzip2 status \(status))") }
        guard produced == UInt64(size) else { throw .io("\(what) decompresses to \(produced) bytes, not \(size)") }
        return output
    }
}
