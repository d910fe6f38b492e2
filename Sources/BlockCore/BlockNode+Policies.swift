#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// The bits of `BlockNode.policyBits`: which live policies are on. While none is, a write costs one
/// load and one branch more than the bare driver call, and allocates nothing.
enum PolicyBits {
    /// A write threshold is armed on this node.
    static let threshold: UInt8 = 1 << 0
    /// `detect-zeroes` is `on` or `unmap`.
    static let detectZeroes: UInt8 = 1 << 1
    /// The driver takes blkdebug events (fixed for the node's life).
    static let debugEvents: UInt8 = 1 << 2
    /// Some dirty bitmap of the node records writes.
    static let dirtyBitmaps: UInt8 = 1 << 3
    // 1 << 4: a block job's write hook (BlockNode+WriteHook.swift).
}

extension BlockNode {
    // MARK: - Write threshold (QEMU's block/write-threshold.c)

    /// The node's write threshold in bytes, 0 when none is set. For a node whose driver measures it
    /// on its `file` child (`DriverFeatures.writeThresholdOnFile`), the child's.
    public var writeThreshold: UInt64 {
        if let measured = thresholdNode, measured !== self { return measured.writeThreshold }
        return thresholdBytes.load(ordering: .relaxed)
    }

    /// Sets the write threshold (0 removes it): the first write or zero-write that reaches past it
    /// sends `BlockEvent.writeThreshold` naming this node, once, and clears it. When the driver
    /// declares `writeThresholdOnFile`, the threshold is armed on the `file` child and measured in
    /// the child's offsets; it then replaces any threshold set on the child itself.
    public func setWriteThreshold(_ bytes: UInt64) {
        (thresholdNode ?? self).armWriteThreshold(bytes, reportAs: name)
    }

    /// The node a threshold set here is measured on: this node, or its `file` child (recursively)
    /// when the driver says so; nil when the driver says so but has no `file` child.
    private var thresholdNode: BlockNode? {
        guard driver.features.writeThresholdOnFile else { return self }
        return children.first { $0.role == "file" }?.node.thresholdNode
    }

    private func armWriteThreshold(_ bytes: UInt64, reportAs owner: String) {
        policyLock.withLock { reported in
            reported = owner
            thresholdBytes.store(bytes, ordering: .relaxed)
            if bytes == 0 {
                policyBits.bitwiseAnd(~PolicyBits.threshold, ordering: .relaxed)
            } else {
                policyBits.bitwiseOr(PolicyBits.threshold, ordering: .relaxed)
            }
        }
    }

    /// Sends the threshold event when a write of `count` bytes at `offset` reaches past the threshold.
    @inline(__always)
    func checkWriteThreshold(_ offset: UInt64, _ count: UInt64) {
        let threshold = thresholdBytes.load(ordering: .relaxed)
        guard threshold != 0, offset + count > threshold else { return }
        thresholdCrossed(threshold, end: offset + count)
    }

    private func thresholdCrossed(_ threshold: UInt64, end: UInt64) {
        // Of concurrent crossing writes, the one that clears the threshold reports it.
        guard thresholdBytes.compareExchange(expected: threshold, desired: 0, ordering: .relaxed).exchanged else { return }
        let owner = policyLock.withLock { reported -> String in
            if thresholdBytes.load(ordering: .relaxed) == 0 { policyBits.bitwiseAnd(~PolicyBits.threshold, ordering: .relaxed) }
            return reported
        }
        events.send(.writeThreshold(nodeName: owner, amountExceeded: end - threshold, threshold: threshold))
    }

    // MARK: - detect-zeroes

    /// The node's `detect-zeroes` setting, as it is now.
    public var detectZeroes: DetectZeroes {
        DetectZeroes(rawValue: detectZeroesMode.load(ordering: .relaxed)) ?? .off
    }

    /// Changes `detect-zeroes` on the running node; writes that start afterwards see the new setting.
    /// Fails, changing nothing, when the setting is not allowed with the node's `discard` setting.
    public func setDetectZeroes(_ mode: DetectZeroes) throws(BlockError) {
        if let problem = mode.problem(discardUnmap: common.discardUnmap) { throw .invalid(problem) }
        policyLock.withLock { _ in
            detectZeroesMode.store(mode.rawValue, ordering: .relaxed)
            if mode == .off {
                policyBits.bitwiseAnd(~PolicyBits.detectZeroes, ordering: .relaxed)
            } else {
                policyBits.bitwiseOr(PolicyBits.detectZeroes, ordering: .relaxed)
            }
        }
    }

    // MARK: - blkdebug events

    /// Raises a blkdebug event on this node, as QEMU's `BLKDBG_EVENT(child, event)`: a driver calls
    /// it on its child (`file.debugEvent(.l2Load)`) at the place the contract names. Only a node
    /// whose driver takes events (blkdebug) does anything; on any other it is one branch.
    @inline(__always)
    public func debugEvent(_ event: BlkdebugEvent) {
        if takesDebugEvents { driver.debugEvent(event) }
    }

    // MARK: - The write path with policies on

    /// A write while some policy is on: the threshold is checked, an all-zero payload becomes a
    /// zero-write under detect-zeroes, and the blkdebug events of the write are raised.
    func writeWithPolicies(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        let bits = policyBits.load(ordering: .relaxed)
        let count = UInt64(buffer.count)
        let events = bits & PolicyBits.debugEvents != 0
        if bits & PolicyBits.threshold != 0 { checkWriteThreshold(offset, count) }
        // Marked after the write, failed or not, before it is acknowledged (QEMU's write_req_finish).
        defer { if bits & PolicyBits.dirtyBitmaps != 0 { dirtyBitmaps.mark(offset, count) } }
        if bits & PolicyBits.detectZeroes != 0, driver.features.fastZero, count > 0, buffer.isAllZero {
            var flags: ZeroFlags = [.fastOnly]
            if detectZeroes == .unmap { flags.insert(.mayUnmap) }
            if fua { flags.insert(.fua) }
            do throws(BlockError) {
                try zeroData(at: offset, length: count, flags: flags, events: events)
                return
            } catch where error.errno == ENOTSUP {
                // No fast zero-write for this range: the payload is written as it came.
            }
        }
        try writeData(buffer, at: offset, fua: fua, events: events)
    }
}
