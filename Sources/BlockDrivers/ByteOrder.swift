/// Loads and stores of integers in one byte order, on the raw bytes of an image format's
/// structures; a format names its byte order by an enum that conforms (`Qcow2Bytes`, `VdiBytes`).
protocol ByteOrder {
    /// `value` converted between this byte order and the machine's (the same swap both ways).
    static func swapped<T: FixedWidthInteger>(_ value: T) -> T
}

/// The byte order of qcow2, qcow, vpc and other big-endian formats.
protocol BigEndianOrder: ByteOrder {}

/// The byte order of qed, parallels, vdi, vhdx, vmdk and other little-endian formats.
protocol LittleEndianOrder: ByteOrder {}

extension BigEndianOrder {
    @inline(__always)
    static func swapped<T: FixedWidthInteger>(_ value: T) -> T { value.bigEndian }
}

extension LittleEndianOrder {
    @inline(__always)
    static func swapped<T: FixedWidthInteger>(_ value: T) -> T { value.littleEndian }
}

extension ByteOrder {
    @inline(__always)
    static func u16(_ bytes: UnsafeRawBufferPointer, _ offset: Int) -> UInt16 {
        swapped(bytes.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }

    @inline(__always)
    static func u32(_ bytes: UnsafeRawBufferPointer, _ offset: Int) -> UInt32 {
        swapped(bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }

    @inline(__always)
    static func u64(_ bytes: UnsafeRawBufferPointer, _ offset: Int) -> UInt64 {
        swapped(bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }

    @inline(__always)
    static func put(_ value: UInt64, _ bytes: UnsafeMutableRawBufferPointer, _ offset: Int) {
        bytes.storeBytes(of: swapped(value), toByteOffset: offset, as: UInt64.self)
    }

    @inline(__always)
    static func put(_ value: UInt32, _ bytes: UnsafeMutableRawBufferPointer, _ offset: Int) {
        bytes.storeBytes(of: swapped(value), toByteOffset: offset, as: UInt32.self)
    }

    @inline(__always)
    static func put(_ value: UInt16, _ bytes: UnsafeMutableRawBufferPointer, _ offset: Int) {
        bytes.storeBytes(of: swapped(value), toByteOffset: offset, as: UInt16.self)
    }

    /// The 16-bit field at `offset` of an array (the caller has checked the range).
    static func u16(_ bytes: [UInt8], _ offset: Int) -> UInt16 { bytes.withUnsafeBytes { u16($0, offset) } }

    /// The 32-bit field at `offset` of an array (the caller has checked the range).
    static func u32(_ bytes: [UInt8], _ offset: Int) -> UInt32 { bytes.withUnsafeBytes { u32($0, offset) } }

    /// The 64-bit field at `offset` of an array (the caller has checked the range).
    static func u64(_ bytes: [UInt8], _ offset: Int) -> UInt64 { bytes.withUnsafeBytes { u64($0, offset) } }

    /// Stores `value` at `offset` of an array (the caller has checked the range).
    static func put<T: FixedWidthInteger>(_ value: T, _ bytes: inout [UInt8], _ offset: Int) {
        bytes.withUnsafeMutableBytes { $0.storeBytes(of: swapped(value), toByteOffset: offset, as: T.self) }
    }

    /// 64-bit words decoded from bytes (a trailing partial word is ignored).
    static func words(_ bytes: [UInt8]) -> [UInt64] {
        bytes.withUnsafeBytes { raw in (0..<raw.count / 8).map { u64(raw, $0 * 8) } }
    }

    /// The bytes of 64-bit words.
    static func bytes<Words: Collection<UInt64>>(_ words: Words) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: words.count * 8)
        out.withUnsafeMutableBytes { raw in
            for (index, word) in words.enumerated() { put(word, raw, index * 8) }
        }
        return out
    }
}
