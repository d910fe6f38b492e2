#if canImport(Glibc)
import Glibc
#endif
import CBlockShims
import Synchronization

/// A range of bytes of a node: where it starts and how long it is.
public struct ByteRange: Sendable, Equatable {
    /// The first byte.
    public var offset: UInt64
    /// How many bytes.
    public var length: UInt64

    /// Creates a range.
    public init(offset: UInt64, length: UInt64) {
        self.offset = offset
        self.length = length
    }
}

/// A dirty bitmap: one bit per `granularity` bytes of a node, set when a write, zero-write or
/// discard touches the chunk (QEMU's `BdrvDirtyBitmap`).
///
/// The bits are plain 64-bit words set with atomic ORs, so writers on any thread mark without a
/// lock; the word layout is the qcow2 on-disk layout (bit i = chunk i, least significant bit first
/// in each little-endian byte). Everything but marking (state changes, clear, merge) runs on the
/// control plane, serialised by the node's `DirtyBitmapSet`.
public final class DirtyBitmap: @unchecked Sendable {
    /// The bitmap's name (empty for a job's anonymous successor).
    public let name: String
    /// Bytes covered by one bit: a power of two from 512 B to 2 GiB.
    public let granularity: UInt64
    /// log2 of `granularity`.
    public let shift: UInt64
    /// The node size the bitmap covers.
    public let size: UInt64
    /// Bits in use: one per chunk of `size`.
    public let bitCount: UInt64
    /// Words allocated.
    let wordCount: Int
    /// The bits.
    let words: UnsafeMutablePointer<UInt64>

    private let state = Mutex(State())

    /// The mutable attributes, changed through the node's `DirtyBitmapSet`.
    struct State {
        var recording = true
        var persistent = false
        var inconsistent = false
        var readOnly = false
        var users = 0
        var frozen = false
    }

    /// Creates an all-clean bitmap covering `size` bytes.
    public init(name: String, granularity: UInt64, size: UInt64) {
        precondition(granularity >= 512 && granularity & (granularity - 1) == 0)
        self.name = name
        self.granularity = granularity
        self.shift = UInt64(granularity.trailingZeroBitCount)
        self.size = size
        self.bitCount = size == 0 ? 0 : ((size - 1) >> UInt64(granularity.trailingZeroBitCount)) + 1
        self.wordCount = max(1, Int((bitCount + 63) / 64))
        self.words = .allocate(capacity: wordCount)
        words.initialize(repeating: 0, count: wordCount)
    }

    deinit {
        words.deallocate()
    }

    // MARK: - Attributes

    /// True when writes are recorded (QEMU's `recording`; a frozen bitmap records through its successor).
    public var recording: Bool { state.withLock { $0.recording || $0.frozen } }
    /// True when enabled: recording by itself.
    public var enabled: Bool { state.withLock { $0.recording } }
    /// True when stored in the image at close (qcow2 bitmaps extension).
    public var persistent: Bool { state.withLock { $0.persistent } }
    /// True when loaded from an image that was not closed cleanly: its bits cannot be trusted, it
    /// can only be removed.
    public var inconsistent: Bool { state.withLock { $0.inconsistent } }
    /// True when loaded from a read-only image: it can be read and exported, not changed.
    public var readOnly: Bool { state.withLock { $0.readOnly } }
    /// True when an export or a job uses it: it cannot be changed or removed.
    public var busy: Bool { state.withLock { $0.users > 0 || $0.frozen } }
    /// True while a job holds it frozen (`DirtyBitmapSet.freeze`).
    public var frozen: Bool { state.withLock { $0.frozen } }

    func update(_ body: (inout State) -> Void) { state.withLock { body(&$0) } }

    /// An empty bitmap like this one (name, granularity, attributes) over `newSize` bytes.
    func resized(to newSize: UInt64) -> DirtyBitmap {
        let copy = DirtyBitmap(name: name, granularity: granularity, size: newSize)
        let attributes = snapshotState
        copy.update { $0 = attributes }
        return copy
    }

    /// Sets the attributes of a bitmap a driver loaded from an image, before the node takes it.
    public func setLoaded(persistent: Bool, inconsistent: Bool, readOnly: Bool, recording: Bool) {
        update {
            $0.persistent = persistent
            $0.inconsistent = inconsistent
            $0.readOnly = readOnly
            $0.recording = recording
        }
    }
    var snapshotState: State { state.withLock { $0 } }

    /// Marks the bitmap as used by an export or job (`busy`) until `release`.
    public func retain() { state.withLock { $0.users += 1 } }
    /// Ends one use begun with `retain`.
    public func release() { state.withLock { $0.users -= 1 } }

    // MARK: - Bits

    /// Sets the bits of every chunk that `[offset, offset + length)` touches; any thread, no lock.
    @inline(__always)
    public func mark(_ offset: UInt64, _ length: UInt64) {
        guard length > 0, offset < size else { return }
        DirtyBitmap.setBits(words, first: offset >> shift, last: min((offset + length - 1) >> shift, bitCount - 1))
    }

    /// Sets bits `first...last` of `words`. A run within one word (any write up to 64 chunks that
    /// does not straddle a word) is one load, and one atomic OR only when some bit was clean.
    @inline(__always)
    static func setBits(_ words: UnsafeMutablePointer<UInt64>, first: UInt64, last: UInt64) {
        let firstWord = first >> 6
        if firstWord == last >> 6 {
            // 2 << 63 wraps to 0, and 0 - 1 is all ones: a whole word.
            let mask: UInt64 = ((2 &<< (last &- first)) &- 1) &<< (first & 63)
            let word = words + Int(firstWord)
            // Reading first keeps an already-dirty chunk's cache line shared between writers.
            if blk_word_load(word) & mask != mask { blk_word_or(word, mask) }
            return
        }
        setBitsAcrossWords(words, first: first, last: last)
    }

    /// `setBits` over several words.
    static func setBitsAcrossWords(_ words: UnsafeMutablePointer<UInt64>, first: UInt64, last: UInt64) {
        var index = Int(first >> 6)
        let lastIndex = Int(last >> 6)
        while index <= lastIndex {
            let low: UInt64 = index == Int(first >> 6) ? first & 63 : 0
            let high: UInt64 = index == lastIndex ? last & 63 : 63
            let top: UInt64 = high == 63 ? UInt64.max : (UInt64(1) << (high + 1)) - 1
            let mask: UInt64 = top & (UInt64.max << low)
            let word = words + index
            if blk_word_load(word) & mask != mask { blk_word_or(word, mask) }
            index += 1
        }
    }

    /// Clears the bits of every chunk lying wholly inside the range (a range given in chunks, as
    /// jobs use it: partial chunks at the edges stay dirty).
    public func reset(_ offset: UInt64, _ length: UInt64) {
        guard length > 0, offset < size else { return }
        let end = min(offset + length, size)
        var first = (offset + granularity - 1) >> shift
        let stop = end == size ? bitCount : end >> shift
        while first < stop {
            let index = Int(first >> 6)
            let high: UInt64 = min(stop - UInt64(index) * 64, 64)
            let low: UInt64 = first & 63
            let top: UInt64 = high == 64 ? UInt64.max : (UInt64(1) << high) - 1
            let mask: UInt64 = top & (UInt64.max << low)
            blk_word_and_not(words + index, mask)
            first = UInt64(index + 1) * 64
        }
    }

    /// Clears every bit.
    public func clear() {
        for index in 0..<wordCount { blk_word_store(words + index, 0) }
    }

    /// Sets every bit.
    public func fill() {
        mark(0, size)
    }

    /// True when the chunk holding `offset` is dirty.
    public func isDirty(_ offset: UInt64) -> Bool {
        guard offset < size else { return false }
        let bit = offset >> shift
        let mask: UInt64 = 1 << (bit & 63)
        return blk_word_load(words + Int(bit >> 6)) & mask != 0
    }

    /// Dirty chunks.
    public var dirtyChunks: UInt64 {
        var total: UInt64 = 0
        for index in 0..<wordCount { total += UInt64(blk_word_load(words + index).nonzeroBitCount) }
        return total
    }

    /// QEMU's `count`: dirty chunks times the granularity.
    public var count: UInt64 { dirtyChunks << shift }

    /// An anonymous copy of the bits, for a job's working set (reset as it copies).
    public func copy(named name: String = "") -> DirtyBitmap {
        let copy = DirtyBitmap(name: name, granularity: granularity, size: size)
        copy.merge(from: self)
        return copy
    }

    /// Sets every bit of `other`'s dirty ranges here (granularities may differ; QEMU's merge).
    public func merge(from other: DirtyBitmap) {
        if other.granularity == granularity && other.wordCount == wordCount {
            for index in 0..<wordCount {
                let bits = blk_word_load(other.words + index)
                if bits != 0 { blk_word_or(words + index, bits) }
            }
            return
        }
        for range in other.dirtyRanges() { mark(range.offset, range.length) }
    }

    /// The runs of equal state from `offset`, at most `length` bytes and `limit` runs, clipped to
    /// the node size: (length, dirty), alternating. Whole clean or dirty words are skipped 64 chunks at a time, so a
    /// sparse 1 TiB bitmap is scanned in well under a millisecond.
    public func runs(from offset: UInt64, length: UInt64, limit: Int = .max) -> [(length: UInt64, dirty: Bool)] {
        var result: [(length: UInt64, dirty: Bool)] = []
        let end = min(offset + length, size)
        var position = offset
        while position < end && result.count < limit {
            let dirty = isDirty(position)
            let next = min(nextChange(after: position >> shift, dirty: dirty) << shift, end)
            result.append((next - position, dirty))
            position = next
        }
        return result
    }

    /// The dirty ranges, in order, merged (the last one clipped to the node size).
    public func dirtyRanges(from offset: UInt64 = 0, length: UInt64 = .max) -> [ByteRange] {
        var ranges: [ByteRange] = []
        let end = length > size ? size : min(offset + length, size)
        var position = offset
        while position < end {
            let bit = position >> shift
            if isDirty(position) {
                let next = min(nextChange(after: bit, dirty: true) << shift, end)
                ranges.append(ByteRange(offset: position, length: next - position))
                position = next
            } else {
                position = nextChange(after: bit, dirty: false) << shift
            }
        }
        return ranges
    }

    /// The first chunk after `bit` whose state differs from `dirty`, or `bitCount`.
    private func nextChange(after bit: UInt64, dirty: Bool) -> UInt64 {
        var index = Int(bit >> 6)
        // A set bit of `word` is a chunk in the other state; chunks before `bit` do not count.
        var word: UInt64 = blk_word_load(words + index)
        if dirty { word = ~word }
        word &= UInt64.max << (bit & 63)
        while word == 0 {
            index += 1
            if index >= wordCount { return bitCount }
            word = blk_word_load(words + index)
            if dirty { word = ~word }
        }
        return min(UInt64(index) * 64 + UInt64(word.trailingZeroBitCount), bitCount)
    }

    // MARK: - Serialisation (qcow2 bitmap data)

    /// The bits as bytes, least significant bit first: chunk i is bit i % 8 of byte i / 8.
    public func serialized() -> [UInt8] {
        let byteCount = Int((bitCount + 7) / 8)
        var bytes = [UInt8](repeating: 0, count: byteCount)
        bytes.withUnsafeMutableBytes { out in
            for index in 0..<wordCount {
                var word = blk_word_load(words + index).littleEndian
                let start = index * 8
                guard start < byteCount else { break }
                withUnsafeBytes(of: &word) { raw in
                    UnsafeMutableRawBufferPointer(rebasing: out[start..<min(start + 8, byteCount)])
                        .copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[0..<min(8, byteCount - start)]))
                }
            }
        }
        return bytes
    }

    /// ORs serialised bits (as `serialized` gives them) in, starting at byte `byteOffset` of the data.
    public func deserialize(_ bytes: UnsafeRawBufferPointer, atByte byteOffset: Int) {
        for (position, byte) in bytes.enumerated() where byte != 0 {
            let bit = UInt64(byteOffset + position) * 8
            guard bit < bitCount else { break }
            let index = Int(bit >> 6)
            var value = UInt64(byte)
            // Bits past the last chunk are padding: ignored.
            if bitCount - bit < 8 { value &= (UInt64(1) << (bitCount - bit)) - 1 }
            blk_word_or(words + index, value << (bit & 63))
        }
    }
}

extension DirtyBitmap {
    /// The SHA-256 of the bits as QEMU's `hbitmap_sha256` hashes them: every 64-bit word, little-endian.
    public var sha256: String {
        var bytes = [UInt8](repeating: 0, count: wordCount * 8)
        for index in 0..<wordCount {
            let word = blk_word_load(words + index)
            for byte in 0..<8 { bytes[index * 8 + byte] = UInt8(truncatingIfNeeded: word >> UInt64(byte * 8)) }
        }
        return SHA256.hex(bytes)
    }
}
