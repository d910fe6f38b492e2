import Synchronization

/// A set of fixed-size chunks of a node (dirty, or still to copy), one bit each, safe to change
/// from clients' threads and the job's thread at once.
public final class ChunkBitmap: Sendable {
    /// Bytes per bit.
    public let granularity: UInt64
    /// The size of the node covered.
    public let length: UInt64
    private struct Bits {
        var words: [UInt64]
        var count: Int = 0
        var cursor: Int = 0
    }
    private let bits: Mutex<Bits>

    /// An empty bitmap over `length` bytes at `granularity` bytes per bit (a power of two).
    public init(length: UInt64, granularity: UInt64) {
        self.granularity = granularity
        self.length = length
        let chunks = Int((length + granularity - 1) / granularity)
        bits = Mutex(Bits(words: [UInt64](repeating: 0, count: (chunks + 63) / 64)))
    }

    /// Number of chunks.
    public var chunks: Int { Int((length + granularity - 1) / granularity) }

    /// Number of set chunks.
    public var count: Int { bits.withLock { $0.count } }

    /// Bytes the set chunks cover (the last chunk may be short).
    public var bytes: UInt64 {
        bits.withLock { state in
            var total = UInt64(state.count) * granularity
            let last = chunks - 1
            if last >= 0, state.words[last / 64] & (1 << UInt64(last % 64)) != 0 { total -= UInt64(chunks) * granularity - length }
            return total
        }
    }

    /// Sets every chunk that `[offset, offset+count)` touches.
    public func set(_ offset: UInt64, _ count: UInt64) {
        guard count > 0, offset < length else { return }
        let first = Int(offset / granularity)
        let last = Int((min(offset + count, length) - 1) / granularity)
        bits.withLock { state in
            for chunk in first...last where state.words[chunk / 64] & (1 << UInt64(chunk % 64)) == 0 {
                state.words[chunk / 64] |= 1 << UInt64(chunk % 64)
                state.count += 1
            }
        }
    }

    /// Sets every chunk.
    public func setAll() { set(0, length) }

    /// Whether a chunk is set.
    public func contains(_ chunk: Int) -> Bool {
        bits.withLock { $0.words[chunk / 64] & (1 << UInt64(chunk % 64)) != 0 }
    }

    /// Clears one chunk; true when it was set.
    @discardableResult
    public func clear(_ chunk: Int) -> Bool {
        bits.withLock { state in
            guard state.words[chunk / 64] & (1 << UInt64(chunk % 64)) != 0 else { return false }
            state.words[chunk / 64] &= ~(1 << UInt64(chunk % 64))
            state.count -= 1
            return true
        }
    }

    /// Clears and returns up to `limit` consecutive set chunks, the first set one at or after a
    /// rotating cursor (so a busy region does not starve the rest); nil when none is set.
    public func takeRun(limit: Int) -> Range<Int>? {
        bits.withLock { state -> Range<Int>? in
            guard state.count > 0 else { return nil }
            let total = chunks
            var chunk = state.cursor < total ? state.cursor : 0
            var scanned = 0
            while scanned < total {
                let word = state.words[chunk / 64] >> UInt64(chunk % 64)
                if word == 0 {
                    let skip = 64 - chunk % 64
                    scanned += skip
                    chunk += skip
                    if chunk >= total { chunk = 0 }
                    continue
                }
                chunk += word.trailingZeroBitCount
                if chunk >= total { scanned += total; chunk = 0; continue }
                var end = chunk
                while end < total && end - chunk < limit && state.words[end / 64] & (1 << UInt64(end % 64)) != 0 {
                    state.words[end / 64] &= ~(1 << UInt64(end % 64))
                    state.count -= 1
                    end += 1
                }
                state.cursor = end
                return chunk..<end
            }
            return nil
        }
    }

    /// The byte range of chunks `run`, clamped to the node's end.
    public func byteRange(_ run: Range<Int>) -> Range<UInt64> {
        UInt64(run.lowerBound) * granularity..<min(UInt64(run.upperBound) * granularity, length)
    }
}
