/// Reads fuzzer bytes as small decisions and numbers; past the end every read gives zero.
public struct FuzzInput {
    /// The bytes not consumed yet.
    public private(set) var remaining: ArraySlice<UInt8>

    /// Reads from the start of `bytes`.
    public init(_ bytes: [UInt8]) { remaining = bytes[...] }

    /// True when every byte was consumed.
    public var isEmpty: Bool { remaining.isEmpty }

    /// The next byte.
    public mutating func byte() -> UInt8 { remaining.popFirst() ?? 0 }

    /// The next little-endian integer of `count` bytes (at most 8).
    public mutating func integer(bytes count: Int) -> UInt64 {
        var value: UInt64 = 0
        for index in 0..<min(count, 8) { value |= UInt64(byte()) << (8 * UInt64(index)) }
        return value
    }

    /// A value in `0..<bound` (bound > 0).
    public mutating func below(_ bound: Int) -> Int { Int(integer(bytes: 2) % UInt64(bound)) }

    /// Takes the next `count` bytes, or fewer at the end.
    public mutating func take(_ count: Int) -> [UInt8] {
        let taken = remaining.prefix(count)
        remaining = remaining.dropFirst(taken.count)
        return Array(taken)
    }

    /// Takes every byte left.
    public mutating func rest() -> [UInt8] { take(remaining.count) }
}
