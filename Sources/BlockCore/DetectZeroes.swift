/// The `detect-zeroes` setting of a node (`BlockdevDetectZeroesOptions`): whether a write whose
/// payload is all zeroes becomes a zero-write, and whether that zero-write may deallocate.
public enum DetectZeroes: UInt8, CaseIterable, Sendable {
    /// `off`: payloads are written as they are (the default, and free: no payload is looked at).
    case off
    /// `on`: an all-zero payload becomes a zero-write that keeps the range allocated.
    case on
    /// `unmap`: an all-zero payload becomes a zero-write that may punch a hole; needs `discard=unmap`.
    case unmap

    /// The spelling of the schema.
    public var name: String {
        switch self {
        case .off: "off"
        case .on: "on"
        case .unmap: "unmap"
        }
    }

    /// The setting spelt `name`, or nil.
    public init?(name: String) {
        guard let found = DetectZeroes.allCases.first(where: { $0.name == name }) else { return nil }
        self = found
    }

    /// Why this setting cannot be used on a node with the given discard setting, or nil (QEMU's rule
    /// and wording: `unmap` only with `discard=unmap`).
    public func problem(discardUnmap: Bool) -> String? {
        self == .unmap && !discardUnmap
            ? "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap" : nil
    }
}
