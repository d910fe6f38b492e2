#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock
import Synchronization

/// The `quorum` driver: writes go to every child and succeed when at least `vote-threshold` of
/// them do; reads (`read-pattern=quorum`) read every child and return the bytes a majority of at
/// least `vote-threshold` children agree on, or (`fifo`) the first child that reads without error.
/// A child that fails or is outvoted is reported (`QUORUM_REPORT_BAD`), a request that cannot
/// reach the threshold fails and is reported (`QUORUM_FAILURE`). With `rewrite-corrupted` the
/// outvoted children are rewritten with the majority's bytes; with `blkverify` (two children,
/// threshold 2) any difference is logged as an error and fails the read.
public final class QuorumDriver: BlockDriver, ChildReplacing {
    public let driverName = "quorum"
    public let features: DriverFeatures
    /// The children; a mirror's pivot may replace one (`replaceChild`).
    private let slots: Mutex<[BlockNode]>
    private var children: [BlockNode] { slots.withLock { $0 } }
    private let threshold: Int
    private let fifo: Bool
    private let rewriteCorrupted: Bool
    private let blkverify: Bool
    private let nodeName: String
    private let events: BlockEventSink

    /// Creates a quorum over `children` (at least one, all of the same size).
    init(nodeName: String, children: [BlockNode], threshold: Int, fifo: Bool, rewriteCorrupted: Bool, blkverify: Bool,
         events: BlockEventSink) {
        self.nodeName = nodeName
        self.slots = Mutex(children)
        self.threshold = threshold
        self.fifo = fifo
        self.rewriteCorrupted = rewriteCorrupted
        self.blkverify = blkverify
        self.events = events
        var features = DriverFeatures()
        features.fua = .emulated
        features.fastZero = children.allSatisfy(\.features.fastZero)
        features.needsFlush = children.contains { $0.features.needsFlush }
        features.multiConnSafe = children.allSatisfy(\.features.multiConnSafe)
        features.alignment = children.map(\.features.alignment).max() ?? 1
        features.maxTransfer = children.map(\.features.maxTransfer).min() ?? features.maxTransfer
        self.features = features
    }

    public var length: UInt64 { children[0].length }

    public func replaceChild(_ old: BlockNode, with new: BlockNode) -> Bool {
        slots.withLock { list in
            guard let index = list.firstIndex(where: { $0 === old }) else { return false }
            list[index] = new
            return true
        }
    }
    public var filename: String { "quorum://" }

    // MARK: - Reads

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        if fifo { return try readFirstThatWorks(into: buffer, at: offset) }
        // Child 0 reads into the caller's buffer (aligned for every child); the others into their own.
        let extra = (1..<children.count).map { _ in AlignedBuffer(capacity: max(buffer.count, 1)) }
        // `buffers` points into `extra`'s memory: keep the owners alive until the vote is done
        // (without this the optimiser may free them right after `buffers` is built).
        defer { withExtendedLifetime(extra) {} }
        let buffers = [buffer] + extra.map { UnsafeMutableRawBufferPointer(rebasing: $0.bytes[0..<buffer.count]) }
        var failures: [BlockError] = []
        var succeeded: [Int] = []
        for (index, child) in children.enumerated() {
            do throws(BlockError) {
                try child.read(into: buffers[index], at: offset)
                succeeded.append(index)
            } catch {
                failures.append(error)
                reportBad(.read, child: index, error: error, offset: offset, length: UInt64(buffer.count))
            }
        }
        let vote = QuorumVote(succeeded: succeeded, threshold: threshold) { a, b in
            buffer.count == 0 || memcmp(buffers[a].baseAddress!, buffers[b].baseAddress!, buffer.count) == 0
        }
        switch vote.outcome {
        case .unanimous(let winner):
            if winner != 0 { buffer.copyMemory(from: UnsafeRawBufferPointer(buffers[winner])) }
        case .majority(let winner, let outvoted):
            if blkverify {
                let message = "quorum: node '\(nodeName)': blkverify: read offset=\(offset) bytes=\(buffer.count): "
                    + "contents of '\(children[0].name)' and '\(children[1].name)' differ"
                Log.error(message)
                throw .io(message)
            }
            if winner != 0 { buffer.copyMemory(from: UnsafeRawBufferPointer(buffers[winner])) }
            for index in outvoted { reportBad(.read, child: index, error: nil, offset: offset, length: UInt64(buffer.count)) }
            if rewriteCorrupted { rewrite(outvoted, with: UnsafeRawBufferPointer(buffer), at: offset) }
        case .failed:
            reportFailure(offset: offset, length: UInt64(buffer.count))
            throw failures.count > children.count - threshold ? QuorumVote.error(of: failures)
                : .io("quorum: node '\(nodeName)': no \(threshold) children agree on the data at \(offset)")
        }
    }

    private func readFirstThatWorks(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        var last: BlockError?
        for (index, child) in children.enumerated() {
            do throws(BlockError) {
                try child.read(into: buffer, at: offset)
                return
            } catch {
                reportBad(.read, child: index, error: error, offset: offset, length: UInt64(buffer.count))
                last = error
            }
        }
        throw last!
    }

    private func rewrite(_ outvoted: [Int], with bytes: UnsafeRawBufferPointer, at offset: UInt64) {
        for index in outvoted where !children[index].readOnly {
            do throws(BlockError) {
                try children[index].write(bytes, at: offset, fua: false)
                Log.info("quorum: node '\(nodeName)': rewrote \(bytes.count) bytes at \(offset) of '\(children[index].name)'")
            } catch {
                Log.warning("quorum: node '\(nodeName)': rewriting '\(children[index].name)' at \(offset) failed: \(error.message)")
            }
        }
    }

    // MARK: - Writes and flushes

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        try everyChild(.write, offset: offset, length: UInt64(buffer.count)) { child throws(BlockError) in
            try child.write(buffer, at: offset, fua: false)
        }
    }

    public func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockError) {
        try everyChild(.write, offset: offset, length: length) { child throws(BlockError) in
            try child.writeZeroes(at: offset, length: length, flags: flags.subtracting(.fua))
        }
    }

    public func flush() throws(BlockError) {
        try everyChild(.flush, offset: 0, length: nil) { child throws(BlockError) in try child.flush() }
    }

    /// Runs an operation on every child; fails, with the most frequent error, when fewer than the
    /// threshold succeed. A flush is reported per child but sends no QUORUM_FAILURE, as in QEMU.
    private func everyChild(
        _ operation: QuorumOperation, offset: UInt64, length: UInt64?, _ body: (BlockNode) throws(BlockError) -> Void
    ) throws(BlockError) {
        var failures: [BlockError] = []
        for (index, child) in children.enumerated() {
            do throws(BlockError) {
                try body(child)
            } catch {
                failures.append(error)
                reportBad(operation, child: index, error: error, offset: offset, length: length ?? child.length)
            }
        }
        guard children.count - failures.count < threshold else { return }
        if let length { reportFailure(offset: offset, length: length) }
        throw QuorumVote.error(of: failures)
    }

    // MARK: - Events

    private static func sectors(_ offset: UInt64, _ length: UInt64) -> (first: UInt64, count: UInt64) {
        let first = offset / 512
        return (first, (offset + length + 511) / 512 - first)
    }

    private func reportBad(_ operation: QuorumOperation, child: Int, error: BlockError?, offset: UInt64, length: UInt64) {
        let (first, count) = QuorumDriver.sectors(offset, length)
        let message = error.map { String(cString: strerror($0.errno)) }
        events.send(.quorumReportBad(operation: operation, error: message, nodeName: children[child].name, sector: first, sectors: count))
    }

    private func reportFailure(offset: UInt64, length: UInt64) {
        let (first, count) = QuorumDriver.sectors(offset, length)
        events.send(.quorumFailure(reference: nodeName, sector: first, sectors: count))
    }

    // MARK: - Opening

    /// Opens `quorum` nodes: `children`, `vote-threshold`, `blkverify`, `rewrite-corrupted`, `read-pattern`.
    public static let opener: DriverOpener = { options, context throws(OptionError) in
        let children = try context.children("children", of: options)
        guard !children.isEmpty else { throw options.failure("Number of provided children must be 1 or more") }
        let threshold = try options.requiredInteger("vote-threshold")
        guard threshold >= 1 else {
            throw options.failure("vote-threshold must be 1 or more", qmp: "Parameter 'vote-threshold' expects value >= 1")
        }
        guard threshold <= children.count else { throw options.failure("threshold may not exceed children count") }
        let blkverify = try options.bool("blkverify") ?? false
        let rewrite = try options.bool("rewrite-corrupted") ?? false
        let fifo = try options.choice("read-pattern", ["quorum", "fifo"]) == "fifo"
        if blkverify && (children.count != 2 || threshold != 2) {
            throw options.failure("blkverify=on can only be set if there are exactly two files and vote-threshold is 2")
        }
        if rewrite && blkverify { throw options.failure("rewrite-corrupted=on cannot be used with blkverify=on") }
        if rewrite && fifo { throw options.failure("rewrite-corrupted=on cannot be used with read-pattern=fifo") }
        for child in children where child.length != children[0].length {
            throw options.failure("children differ in size: '\(children[0].name)' has \(children[0].length) bytes, '\(child.name)' \(child.length)")
        }
        try context.requireWritable(children, of: options)
        let driver = QuorumDriver(
            nodeName: context.nodeName, children: children, threshold: Int(threshold), fifo: fifo, rewriteCorrupted: rewrite,
            blkverify: blkverify, events: context.graph.events)
        return OpenedDriver(driver: driver, children: children.enumerated().map { ("children.\($0.offset)", $0.element) })
    }
}
