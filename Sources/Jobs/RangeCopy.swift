import BlockCore

/// Copies byte ranges from one node to another through one reusable aligned buffer: zero ranges
/// (by block status) become zero-writes, the rest is read and written.
final class RangeCopy: @unchecked Sendable {
    let source: BlockNode
    let target: BlockNode
    /// Zero ranges may be deallocated on the target.
    let unmap: Bool
    /// Zero ranges are written as data, so that the target holds them whatever lies under it later
    /// (an incremental backup is restored over a full one; a zero-write into an unallocated
    /// cluster of an image without a backing file would change nothing).
    let zeroesAsData: Bool
    private let buffer: AlignedBuffer

    init(source: BlockNode, target: BlockNode, bufferSize: Int, unmap: Bool = true, zeroesAsData: Bool = false) {
        self.source = source
        self.target = target
        self.unmap = unmap
        self.zeroesAsData = zeroesAsData
        self.buffer = AlignedBuffer(capacity: bufferSize)
    }

    var bufferSize: Int { buffer.bytes.count }

    /// Copies `range` (at most `bufferSize` bytes). Errors say whether the read or the write failed.
    func copy(_ range: Range<UInt64>) throws(CopyFailure) {
        var position = range.lowerBound
        while position < range.upperBound {
            let extents: [Extent]
            do {
                extents = try source.blockStatus(at: position, length: range.upperBound - position)
            } catch {
                throw CopyFailure(error: error, write: false)
            }
            let first = extents.first ?? .data(range.upperBound - position)
            let count = max(1, min(first.length, range.upperBound - position))
            if first.zero && !zeroesAsData {
                do {
                    try target.writeZeroes(at: position, length: count, flags: unmap ? [.mayUnmap] : [])
                } catch {
                    throw CopyFailure(error: error, write: true)
                }
            } else {
                let slice = UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[0..<Int(count)])
                do {
                    try source.read(into: slice, at: position)
                } catch {
                    throw CopyFailure(error: error, write: false)
                }
                do {
                    try target.write(UnsafeRawBufferPointer(slice), at: position, fua: false)
                } catch {
                    throw CopyFailure(error: error, write: true)
                }
            }
            position += count
        }
    }
}

/// A failed copy: the error and whether it was the write (to the target) that failed.
struct CopyFailure: Error {
    var error: BlockError
    var write: Bool
}
