import BlockCore

/// `block-stream`: copies into `top` the data its backing chain holds above `base`, then makes
/// `base` (or nothing) its backing file. Clients keep writing to `top`; a chunk a client writes
/// while the job copies it is never overwritten with the older data (`RangeGate`).
public final class StreamJob: JobDriver, NodeUser, @unchecked Sendable {
    public let kind = JobKind.stream
    /// The image that receives the data.
    public let top: BlockNode
    /// The image that stays below it, nil for none.
    public let base: BlockNode?
    /// How many layers below `top` `base` is (nil base: the whole chain).
    let baseDepth: Int
    let backingFile: String?
    let backingFormat: String?
    let onError: JobErrorPolicy
    let gate = RangeGate()
    /// Called after the chain was changed, with the images that left it.
    let dropped: @Sendable ([BlockNode]) -> Void

    /// A stream into `top` down to `base` (`baseDepth` layers below), storing `backingFile` in `top`'s header.
    public init(
        top: BlockNode, base: BlockNode?, baseDepth: Int, backingFile: String?, backingFormat: String?,
        onError: JobErrorPolicy = .report, dropped: @escaping @Sendable ([BlockNode]) -> Void
    ) {
        self.top = top
        self.base = base
        self.baseDepth = baseDepth
        self.backingFile = backingFile
        self.backingFormat = backingFormat
        self.onError = onError
        self.dropped = dropped
    }

    public func uses(_ node: BlockNode) -> Bool { node === top }

    /// Puts the range gate on `top`; false when another job's hook is there.
    public func attach() -> Bool { top.installWriteHook(gate) }

    public func run(_ job: Job) throws(JobError) {
        let chunk: UInt64 = 1 << 20
        let buffer = AlignedBuffer(capacity: Int(chunk))
        job.progress(current: 0, total: top.length)
        var ignored: BlockError?
        try ChainCopy.forEachRun(of: top, depths: 1..<baseDepth, chunk: chunk) { (range, zero) throws(JobError) in
            guard job.pausePoint() else { throw JobError("cancelled") }
            let count = range.upperBound - range.lowerBound
            while true {
                do throws(BlockError) {
                    try gate.withJobRange(range) { () throws(BlockError) in
                        // A client may have written part of it meanwhile: copy only what is still below.
                        try ChainCopy.copyUnallocated(top, range, zero: zero, buffer: buffer)
                    }
                    break
                } catch {
                    // QEMU's stream names every failure a read; an ignored one still fails the job at its end.
                    if try !job.handleError(error, write: false, policy: onError) {
                        if ignored == nil { ignored = error }
                        break
                    }
                }
            }
            job.progress(current: range.upperBound, total: top.length)
            job.throttle(count)
        }
        if job.isCancelled { return }
        if let ignored { throw JobError(ignored.message) }
        job.progress(current: top.length, total: top.length)
        do {
            try top.flush()
        } catch {
            throw JobError(error.message)
        }
    }

    public func commit(_ job: Job) throws(JobError) {
        guard let chain = top.driver as? any BackingChain else { return }
        var removed: [BlockNode] = []
        var current = chain.backingNode
        while let node = current, node !== base {
            removed.append(node)
            current = (node.driver as? any BackingChain)?.backingNode
        }
        do {
            try chain.writeBackingName(base == nil ? nil : backingFile, format: backingFormat)
        } catch {
            throw JobError(error.message)
        }
        chain.setBackingNode(base)
        top.setChild("backing", to: base)
        dropped(removed)
    }

    public func clean(_ job: Job) {
        top.removeWriteHook(gate)
    }
}

extension ChainCopy {
    /// Copies into `node` the parts of `range` it does not hold itself (reading them through its chain).
    static func copyUnallocated(_ node: BlockNode, _ range: Range<UInt64>, zero: Bool, buffer: AlignedBuffer) throws(BlockError) {
        var position = range.lowerBound
        while position < range.upperBound {
            let extents = try node.blockStatus(at: position, length: range.upperBound - position)
            guard let first = extents.first, first.length > 0 else { break }
            let end = min(range.upperBound, position + first.length)
            if first.depth != 0 {
                let count = Int(end - position)
                if first.zero {
                    try node.writeZeroes(at: position, length: UInt64(count), flags: [])
                } else {
                    let slice = UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[0..<count])
                    try node.read(into: slice, at: position)
                    try node.write(UnsafeRawBufferPointer(slice), at: position, fua: false)
                }
            }
            position = end
        }
    }
}
