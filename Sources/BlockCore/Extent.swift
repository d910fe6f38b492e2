/// Allocation state of a range of a node, as block status reports it.
public struct Extent: Sendable, Equatable {
    /// The range's length in bytes.
    public var length: UInt64
    /// True when the range reads as zeroes.
    public var zero: Bool
    /// True when the range is a hole: not allocated at this layer or below.
    public var hole: Bool
    /// How many layers down the data was found (0: the node itself; nil when unallocated everywhere).
    public var depth: Int?
    /// Offset of the data in the protocol node's file, when it is known and contiguous.
    public var hostOffset: UInt64?

    /// Creates an extent.
    public init(length: UInt64, zero: Bool, hole: Bool, depth: Int? = 0, hostOffset: UInt64? = nil) {
        self.length = length
        self.zero = zero
        self.hole = hole
        self.depth = depth
        self.hostOffset = hostOffset
    }

    /// Allocated data.
    public static func data(_ length: UInt64, hostOffset: UInt64? = nil) -> Extent {
        Extent(length: length, zero: false, hole: false, depth: 0, hostOffset: hostOffset)
    }

    /// An unallocated range that reads as zeroes.
    public static func hole(_ length: UInt64) -> Extent {
        Extent(length: length, zero: true, hole: true, depth: nil)
    }

    /// A hole in a protocol node's file: reads as zeroes, yet belongs to this layer (allocation depth 1,
    /// as QEMU counts protocol layers).
    public static func fileHole(_ length: UInt64) -> Extent {
        Extent(length: length, zero: true, hole: true, depth: 0)
    }

    /// True when two extents can be reported as one.
    public func sameState(as other: Extent) -> Bool {
        zero == other.zero && hole == other.hole && depth == other.depth
    }
}

extension Array where Element == Extent {
    /// Appends an extent, merging it into the last one when the states agree.
    public mutating func appendMerging(_ extent: Extent) {
        guard extent.length > 0 else { return }
        if var last = self.last, last.sameState(as: extent),
           last.hostOffset.map({ $0 + last.length }) == extent.hostOffset || (last.hostOffset == nil && extent.hostOffset == nil) {
            last.length += extent.length
            self[count - 1] = last
        } else {
            append(extent)
        }
    }
}
