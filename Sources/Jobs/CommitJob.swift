import BlockCore

/// `block-commit` of an image below the active one: copies into `base` what `top` and the
/// images between them hold, then makes `base` the backing file of the image above `top`.
/// Nothing writes to `top` meanwhile (it is below the active image), so no hook is needed.
public final class CommitJob: JobDriver, NodeUser, @unchecked Sendable {
    public let kind = JobKind.commit
    /// The topmost image committed.
    public let top: BlockNode
    /// The image committed into (writable).
    public let base: BlockNode
    /// The image whose backing file `top` is.
    public let above: BlockNode
    /// How many layers below `top` `base` is.
    let baseDepth: Int
    let backingFile: String
    let backingFormat: String
    let onError: JobErrorPolicy
    let dropped: @Sendable ([BlockNode]) -> Void

    /// A commit of `top` (down to just above `base`, `baseDepth` layers below it) into `base`.
    public init(
        top: BlockNode, base: BlockNode, above: BlockNode, baseDepth: Int, backingFile: String, backingFormat: String,
        onError: JobErrorPolicy = .report, dropped: @escaping @Sendable ([BlockNode]) -> Void
    ) {
        self.onError = onError
        self.top = top
        self.base = base
        self.above = above
        self.baseDepth = baseDepth
        self.backingFile = backingFile
        self.backingFormat = backingFormat
        self.dropped = dropped
    }

    public func uses(_ node: BlockNode) -> Bool { node === top || node === base || node === above }

    public func run(_ job: Job) throws(JobError) {
        let copier = RangeCopy(source: top, target: base, bufferSize: 1 << 20, unmap: false)
        if base.length < top.length {
            do {
                try base.resize(to: top.length)
            } catch {
                throw JobError(error.message)
            }
        }
        job.progress(current: 0, total: top.length)
        try ChainCopy.forEachRun(of: top, depths: 0..<baseDepth, chunk: 1 << 20) { (range, _) throws(JobError) in
            guard job.pausePoint() else { throw JobError("cancelled") }
            while true {
                do throws(CopyFailure) {
                    try copier.copy(range)
                    break
                } catch {
                    // Stop and ignore both retry the range (QEMU's commit); report fails the job.
                    _ = try job.handleError(error.error, write: error.write, policy: onError)
                    guard job.pausePoint() else { throw JobError("cancelled") }
                }
            }
            job.progress(current: range.upperBound, total: top.length)
            job.throttle(range.upperBound - range.lowerBound)
        }
        if job.isCancelled { return }
        job.progress(current: top.length, total: top.length)
        do {
            try base.flush()
        } catch {
            throw JobError(error.message)
        }
    }

    public func commit(_ job: Job) throws(JobError) {
        guard let chain = above.driver as? any BackingChain else { return }
        var removed: [BlockNode] = []
        var current: BlockNode? = top
        while let node = current, removed.count < baseDepth {
            removed.append(node)
            current = (node.driver as? any BackingChain)?.backingNode
        }
        do {
            try chain.writeBackingName(backingFile, format: backingFormat)
        } catch {
            throw JobError(error.message)
        }
        chain.setBackingNode(base)
        above.setChild("backing", to: base)
        dropped(removed)
    }
}
