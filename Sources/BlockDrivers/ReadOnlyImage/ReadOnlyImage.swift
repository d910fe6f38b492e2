import BlockCore
import LogOptionsClock

/// A format driver that QEMU opens read-only only (bochs, cloop, dmg): writes are refused, flushes
/// have nothing to do.
protocol ReadOnlyImageDriver: BlockDriver {}

extension ReadOnlyImageDriver {
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        throw .notPermitted("\(driverName) images are read-only")
    }

    public func flush() throws(BlockError) {}
}

/// Helpers shared by the read-only formats: bounded reads of the image file, byte order, the
/// read-only rule at open.
enum ReadOnlyImage {
    /// Refuses a writable open as QEMU does for a format it cannot write.
    static func requireReadOnly(_ context: OpenContext, _ options: OptionReader) throws(OptionError) {
        guard context.common.readOnly else { throw options.failure("Image is read-only") }
    }

    /// `count` bytes of `file` at `offset`; an error when they lie past its end.
    static func bytes(_ file: BlockNode, at offset: UInt64, count: Int) throws(BlockError) -> [UInt8] {
        guard count >= 0, offset <= file.length, UInt64(count) <= file.length - offset else {
            throw .io("\(count) bytes at offset \(offset) lie past the end of the image file (\(file.length) bytes)")
        }
        var bytes = [UInt8](repeating: 0, count: count)
        if count > 0 { try bytes.withMutableBytes { (raw) throws(BlockError) in try file.read(into: raw, at: offset) } }
        return bytes
    }

    /// Little-endian 32-bit value at `at`.
    static func le32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[at + $1]) << (8 * UInt32($1)) }
    }

    /// Little-endian 64-bit value at `at`.
    static func le64(_ bytes: [UInt8], _ at: Int) -> UInt64 {
        (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[at + $1]) << (8 * UInt64($1)) }
    }

    /// Big-endian 32-bit value at `at`.
    static func be32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 << 8 | UInt32(bytes[at + $1]) }
    }

    /// Big-endian 64-bit value at `at`.
    static func be64(_ bytes: [UInt8], _ at: Int) -> UInt64 {
        (0..<8).reduce(UInt64(0)) { $0 << 8 | UInt64(bytes[at + $1]) }
    }

    /// The NUL-terminated string of a fixed-size field.
    static func cString(_ bytes: [UInt8], _ at: Int, _ size: Int) -> String {
        let field = bytes[at..<min(at + size, bytes.count)]
        return String(decoding: field.prefix { $0 != 0 }, as: UTF8.self)
    }
}
