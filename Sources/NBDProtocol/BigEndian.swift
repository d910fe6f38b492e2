/// Unaligned big-endian loads and stores on raw memory, the only byte order NBD uses.
public enum BigEndian {
    /// Reads a big-endian integer at `offset` bytes from `base`.
    @inlinable
    public static func load<T: FixedWidthInteger>(_ type: T.Type, _ base: UnsafeRawPointer, _ offset: Int) -> T {
        T(bigEndian: base.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    /// Writes `value` big-endian at `offset` bytes from `base`.
    @inlinable
    public static func store<T: FixedWidthInteger>(_ value: T, _ base: UnsafeMutableRawPointer, _ offset: Int) {
        base.storeBytes(of: value.bigEndian, toByteOffset: offset, as: T.self)
    }
}

/// An appendable byte array for handshake messages, which are rare and small.
public struct ByteWriter: Sendable {
    /// The bytes written so far.
    public private(set) var bytes: [UInt8] = []

    /// Creates an empty writer.
    public init() {}

    /// Appends a big-endian integer.
    public mutating func append<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
    }

    /// Appends raw bytes.
    public mutating func append(bytes other: some Sequence<UInt8>) {
        bytes.append(contentsOf: other)
    }

    /// Appends a string's UTF-8 bytes, without length or terminator.
    public mutating func append(utf8 string: String) {
        bytes.append(contentsOf: string.utf8)
    }
}

/// A bounds-checked cursor over received bytes; every read fails cleanly past the end.
public struct ByteReader: Sendable {
    private let bytes: [UInt8]
    private var position = 0

    /// Creates a reader over `bytes`.
    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    /// Bytes not read yet.
    public var remaining: Int { bytes.count - position }

    /// Reads a big-endian integer, or nil when too few bytes are left.
    public mutating func read<T: FixedWidthInteger>(_ type: T.Type) -> T? {
        let size = MemoryLayout<T>.size
        guard remaining >= size else { return nil }
        var value: T = 0
        for index in 0..<size { value = (value << 8) | T(bytes[position + index]) }
        position += size
        return value
    }

    /// Reads `count` bytes as a UTF-8 string, or nil when too few bytes are left or they are not UTF-8.
    public mutating func readString(count: Int) -> String? {
        guard count >= 0, remaining >= count else { return nil }
        let slice = bytes[position..<position + count]
        position += count
        guard !slice.contains(0) else { return nil }
        return String(validating: slice, as: UTF8.self)
    }
}
