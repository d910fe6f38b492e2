#if canImport(Glibc)
import Glibc
#endif
import CBlockShims
import Synchronization

/// A refused bitmap operation, worded as QEMU words it (QMP GenericError).
public struct DirtyBitmapError: Error, Sendable, Equatable {
    /// The message.
    public var message: String
    /// Creates an error.
    public init(_ message: String) { self.message = message }
}

/// The dirty bitmaps of one node, and the lock-free path on which writes mark them.
///
/// Writers (any thread) mark every recording bitmap through a published, immutable table: one
/// atomic add and one subtract on a per-thread stripe of reader counts, one atomic load of the
/// table, and atomic ORs into the bitmaps' words; no lock. The control plane (add, remove, enable,
/// freeze...) changes the list under a lock, publishes a new table, and waits until no writer
/// still reads the old one before dropping it.
public final class DirtyBitmapSet: @unchecked Sendable {
    /// The named bitmaps in creation order, and the successors of frozen bitmaps (by parent).
    private struct Registry {
        var bitmaps: [DirtyBitmap] = []
        var successors: [ObjectIdentifier: DirtyBitmap] = [:]
        var trackers: [DirtyBitmap] = []
    }

    private let registry = Mutex(Registry())
    /// The address of the published `MarkTable`, 0 when no bitmap records.
    private let table = Atomic<UInt>(0)
    /// Reader counts: 64 stripes, one per cache line.
    private let readers: UnsafeMutablePointer<UInt64>
    private static let stripes = 64
    /// Told whether any bitmap records, after every change (the node's policy bit).
    private let recordingHook = Mutex<(@Sendable (Bool) -> Void)?>(nil)

    /// Creates an empty set.
    public init() {
        readers = .allocate(capacity: DirtyBitmapSet.stripes * 8)
        readers.initialize(repeating: 0, count: DirtyBitmapSet.stripes * 8)
    }

    deinit {
        let address = table.load(ordering: .relaxed)
        if address != 0 { Unmanaged<MarkTable>.fromOpaque(UnsafeRawPointer(bitPattern: address)!).release() }
        readers.deallocate()
    }

    /// Sets the function told whether any bitmap records (called once, by the node).
    func onRecordingChange(_ hook: @escaping @Sendable (Bool) -> Void) {
        recordingHook.withLock { $0 = hook }
    }

    // MARK: - The write path

    /// Marks `[offset, offset + length)` in every recording bitmap; any thread, no lock.
    @inline(__always)
    public func mark(_ offset: UInt64, _ length: UInt64) {
        let stripe = readers + DirtyBitmapSet.stripeIndex() * 8
        blk_word_add_seq(stripe, 1)
        let address = table.load(ordering: .sequentiallyConsistent)
        if address != 0 {
            Unmanaged<MarkTable>.fromOpaque(UnsafeRawPointer(bitPattern: address)!)._withUnsafeGuaranteedRef {
                $0.mark(offset, length)
            }
        }
        blk_word_sub_release(stripe, 1)
    }

    @inline(__always)
    private static func stripeIndex() -> Int {
        let thread = UInt64(UInt(pthread_self()))
        let hash: UInt64 = thread &* 0x9E37_79B9_7F4A_7C15
        return Int(truncatingIfNeeded: hash >> 58)
    }

    // MARK: - Queries

    /// The named bitmaps, in creation order.
    public var all: [DirtyBitmap] { registry.withLock { $0.bitmaps } }

    /// The bitmap named `name`, or nil.
    public func find(_ name: String) -> DirtyBitmap? {
        registry.withLock { registry in registry.bitmaps.first { $0.name == name } }
    }

    /// The bitmap named `name`, or QEMU's "Dirty bitmap 'NAME' not found".
    public func lookup(_ name: String) throws(DirtyBitmapError) -> DirtyBitmap {
        guard let bitmap = find(name) else { throw DirtyBitmapError("Dirty bitmap '\(name)' not found") }
        return bitmap
    }

    // MARK: - Changes

    /// Adds a bitmap (loaded from an image, or created by a command); fails when the name is taken.
    public func insert(_ bitmap: DirtyBitmap) throws(DirtyBitmapError) {
        let refused = registry.withLock { registry -> Bool in
            if registry.bitmaps.contains(where: { $0.name == bitmap.name }) { return true }
            registry.bitmaps.append(bitmap)
            return false
        }
        if refused { throw DirtyBitmapError("Bitmap already exists: \(bitmap.name)") }
        publish()
    }

    /// Creates and adds a clean bitmap over `size` bytes.
    @discardableResult
    public func add(name: String, granularity: UInt64, size: UInt64, persistent: Bool, disabled: Bool) throws(DirtyBitmapError) -> DirtyBitmap {
        let bitmap = DirtyBitmap(name: name, granularity: granularity, size: size)
        bitmap.update {
            $0.persistent = persistent
            $0.recording = !disabled
        }
        try insert(bitmap)
        return bitmap
    }

    /// Removes a bitmap; refused while it is busy (QEMU's check for `block-dirty-bitmap-remove`).
    public func remove(_ name: String) throws(DirtyBitmapError) {
        let bitmap = try lookup(name)
        try check(bitmap, allow: [.inconsistent])
        registry.withLock { $0.bitmaps.removeAll { $0 === bitmap } }
        publish()
    }

    /// Takes a bitmap out whatever its state (the undo of an add in a failed transaction).
    public func discard(_ bitmap: DirtyBitmap) {
        registry.withLock { $0.bitmaps.removeAll { $0 === bitmap } }
        publish()
    }

    /// Starts an anonymous bitmap, like `bitmap` in granularity, that records every write from now
    /// until `untrack`: a transaction's undo adds those writes back, so that none is lost.
    public func track(like bitmap: DirtyBitmap) -> DirtyBitmap {
        let tracker = DirtyBitmap(name: "", granularity: bitmap.granularity, size: bitmap.size)
        registry.withLock { $0.trackers.append(tracker) }
        publish()
        return tracker
    }

    /// Ends a `track`.
    public func untrack(_ tracker: DirtyBitmap) {
        registry.withLock { $0.trackers.removeAll { $0 === tracker } }
        publish()
    }

    /// Starts or stops recording (`block-dirty-bitmap-enable` / `-disable`).
    public func setEnabled(_ name: String, _ enabled: Bool) throws(DirtyBitmapError) {
        let bitmap = try lookup(name)
        try check(bitmap, allow: [.readOnly])
        bitmap.update { $0.recording = enabled }
        publish()
    }

    /// Clears every bit (`block-dirty-bitmap-clear`).
    public func clear(_ name: String) throws(DirtyBitmapError) {
        let bitmap = try lookup(name)
        try check(bitmap, allow: [])
        bitmap.clear()
    }

    /// Makes a bitmap persistent or not (used by the command that creates it).
    public func setPersistent(_ bitmap: DirtyBitmap, _ persistent: Bool) {
        bitmap.update { $0.persistent = persistent }
    }

    /// What a command may do to a bitmap in a given state, as QEMU's `bdrv_dirty_bitmap_check` flags.
    public struct Allowance: OptionSet, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// A read-only bitmap is acceptable.
        public static let readOnly = Allowance(rawValue: 1)
        /// An inconsistent bitmap is acceptable.
        public static let inconsistent = Allowance(rawValue: 2)
        /// A busy bitmap is acceptable.
        public static let busy = Allowance(rawValue: 4)
    }

    /// Fails with QEMU's message when the bitmap is busy, read-only or inconsistent and `allow`
    /// does not accept that state.
    public func check(_ bitmap: DirtyBitmap, allow: Allowance) throws(DirtyBitmapError) {
        let state = bitmap.snapshotState
        if !allow.contains(.busy) && (state.users > 0 || state.frozen) {
            throw DirtyBitmapError("Bitmap '\(bitmap.name)' is currently in use by another operation and cannot be used")
        }
        if !allow.contains(.readOnly) && state.readOnly {
            throw DirtyBitmapError("Bitmap '\(bitmap.name)' is readonly and cannot be modified")
        }
        if !allow.contains(.inconsistent) && state.inconsistent {
            throw DirtyBitmapError("Bitmap '\(bitmap.name)' is inconsistent and cannot be used")
        }
    }

    // MARK: - Resizing

    /// The first busy bitmap, whose user holds it at its size (a node with one cannot be resized).
    public var firstBusy: DirtyBitmap? { all.first { $0.busy } }

    /// Makes every bitmap cover `size` bytes, as QEMU's `bdrv_dirty_bitmap_truncate` does after a
    /// resize: bits past a smaller end are dropped, a larger end adds clean bits. The resized
    /// bitmaps replace the old ones; both record while the bits are carried over, so no write is lost.
    public func resize(to size: UInt64) {
        let pairs = registry.withLock { registry -> [(old: DirtyBitmap, new: DirtyBitmap)] in
            registry.bitmaps.map { ($0, $0.resized(to: size)) }
        }
        guard !pairs.isEmpty else { return }
        publish(alsoRecording: pairs.filter { $0.old.recording }.map(\.new))
        for pair in pairs { pair.new.merge(from: pair.old) }
        registry.withLock { registry in
            registry.bitmaps = registry.bitmaps.map { bitmap in pairs.first { $0.old === bitmap }?.new ?? bitmap }
        }
        publish()
    }

    // MARK: - Jobs: freeze, then drop or merge back

    /// Freezes a bitmap for a job (QEMU's `bdrv_dirty_bitmap_create_successor`): the bitmap's bits
    /// stay as they are while the job reads them, it is busy, and writes from now on are recorded
    /// in an anonymous successor. End it with `thaw`.
    public func freeze(_ bitmap: DirtyBitmap, allow: Allowance = []) throws(DirtyBitmapError) {
        try check(bitmap, allow: allow)
        let successor = DirtyBitmap(name: "", granularity: bitmap.granularity, size: bitmap.size)
        successor.update { $0.recording = bitmap.enabled }
        registry.withLock { $0.successors[ObjectIdentifier(bitmap)] = successor }
        bitmap.update { $0.frozen = true }
        publish()
    }

    /// Ends a freeze. With `clearFrozenBits` (a job that succeeded, or bitmap-mode `always`), the
    /// bits the job copied are dropped and the bitmap keeps only what was written since the freeze
    /// (QEMU's abdicate); otherwise it keeps every bit and gains the new ones (QEMU's reclaim). No
    /// write is lost either way: the successor records until the bitmap records again.
    public func thaw(_ bitmap: DirtyBitmap, clearFrozenBits: Bool) {
        guard let successor = registry.withLock({ $0.successors[ObjectIdentifier(bitmap)] }) else { return }
        if clearFrozenBits { bitmap.clear() }
        bitmap.update { $0.frozen = false }
        // Both record while the change is published; then the successor's bits are folded in.
        publish(alsoRecording: [successor])
        bitmap.merge(from: successor)
        registry.withLock { _ = $0.successors.removeValue(forKey: ObjectIdentifier(bitmap)) }
        publish()
    }

    /// QEMU's `bitmap-mode` of a backup with `sync: bitmap`: what the bitmap keeps when the job ends.
    public enum JobBitmapMode: String, Sendable {
        /// Cleared when the job succeeds; kept whole when it fails.
        case onSuccess = "on-success"
        /// Never cleared: the job's copy is not recorded in the bitmap.
        case never
        /// Cleared of what the job copied, whether it succeeded or not.
        case always
    }

    /// Ends a job that froze `bitmap` (see `freeze`): the bitmap keeps what `mode` says plus every
    /// write made while it was frozen. `remaining` is what the job did not copy (its working copy,
    /// reset as it went); it matters for `always` after a failure.
    public func finishJob(_ bitmap: DirtyBitmap, mode: JobBitmapMode, succeeded: Bool, remaining: DirtyBitmap?) {
        switch mode {
        case .onSuccess:
            thaw(bitmap, clearFrozenBits: succeeded)
        case .never:
            thaw(bitmap, clearFrozenBits: false)
        case .always:
            if succeeded || remaining == nil {
                thaw(bitmap, clearFrozenBits: succeeded)
            } else if let remaining {
                bitmap.clear()
                bitmap.merge(from: remaining)
                thaw(bitmap, clearFrozenBits: false)
            }
        }
    }

    // MARK: - Publishing

    /// Publishes the table of recording bitmaps and waits until no writer reads the old one.
    private func publish(alsoRecording extra: [DirtyBitmap] = []) {
        let targets = registry.withLock { registry -> [DirtyBitmap] in
            var targets: [DirtyBitmap] = []
            for bitmap in registry.bitmaps {
                let state = bitmap.snapshotState
                if state.frozen {
                    if let successor = registry.successors[ObjectIdentifier(bitmap)], successor.enabled { targets.append(successor) }
                } else if state.recording && !state.inconsistent && !state.readOnly {
                    targets.append(bitmap)
                }
            }
            return targets + registry.trackers
        } + extra
        let new: UInt = targets.isEmpty ? 0 : UInt(bitPattern: Unmanaged.passRetained(MarkTable(targets)).toOpaque())
        let old = table.exchange(new, ordering: .sequentiallyConsistent)
        recordingHook.withLock { $0 }?(!targets.isEmpty)
        guard old != 0 else { return }
        waitForReaders()
        Unmanaged<MarkTable>.fromOpaque(UnsafeRawPointer(bitPattern: old)!).release()
    }

    /// Waits until every stripe of reader counts has been seen at zero once: a writer that loaded
    /// the previous table counted itself before loading it, so by then it has finished.
    private func waitForReaders() {
        for stripe in 0..<DirtyBitmapSet.stripes {
            while blk_word_load_seq(readers + stripe * 8) != 0 { sched_yield() }
        }
    }
}

/// The recording bitmaps as writers see them: an immutable flat table read without reference
/// counting. Bitmaps of the same granularity and size form a group: a write computes its chunk range
/// and word mask once per group, then costs each bitmap of the group one load (and an atomic OR only
/// when a chunk was clean).
final class MarkTable {
    /// Keeps the bitmaps (and so their words) alive while the table is published.
    private let bitmaps: [DirtyBitmap]
    private let groups: UnsafeMutablePointer<Group>
    private let groupCount: Int
    private let words: UnsafeMutablePointer<UnsafeMutablePointer<UInt64>>

    struct Group {
        let shift: UInt64
        let lastBit: UInt64
        let size: UInt64
        let start: Int
        let count: Int
    }

    init(_ bitmaps: [DirtyBitmap]) {
        let usable = bitmaps.filter { $0.bitCount > 0 }
        var grouped: [[DirtyBitmap]] = []
        for bitmap in usable {
            if let index = grouped.firstIndex(where: { $0[0].shift == bitmap.shift && $0[0].size == bitmap.size }) {
                grouped[index].append(bitmap)
            } else {
                grouped.append([bitmap])
            }
        }
        self.bitmaps = usable
        groupCount = grouped.count
        groups = .allocate(capacity: max(1, grouped.count))
        words = .allocate(capacity: max(1, usable.count))
        var start = 0
        for (index, members) in grouped.enumerated() {
            let head = members[0]
            (groups + index).initialize(to: Group(shift: head.shift, lastBit: head.bitCount - 1, size: head.size, start: start, count: members.count))
            for member in members {
                (words + start).initialize(to: member.words)
                start += 1
            }
        }
    }

    deinit {
        groups.deallocate()
        words.deallocate()
    }

    @inline(__always)
    func mark(_ offset: UInt64, _ length: UInt64) {
        guard length > 0 else { return }
        let end = offset + length - 1
        var index = 0
        while index < groupCount {
            let group = groups[index]
            index += 1
            guard offset < group.size else { continue }
            let first = offset >> group.shift
            let last = min(end >> group.shift, group.lastBit)
            let wordIndex = first >> 6
            var member = group.start
            let stop = group.start + group.count
            if wordIndex == last >> 6 {
                // 2 << 63 wraps to 0, and 0 - 1 is all ones: a whole word.
                let mask: UInt64 = ((2 &<< (last &- first)) &- 1) &<< (first & 63)
                let offsetInWords = Int(wordIndex)
                while member < stop {
                    let word = words[member] + offsetInWords
                    if blk_word_load(word) & mask != mask { blk_word_or(word, mask) }
                    member += 1
                }
            } else {
                while member < stop {
                    DirtyBitmap.setBitsAcrossWords(words[member], first: first, last: last)
                    member += 1
                }
            }
        }
    }
}
