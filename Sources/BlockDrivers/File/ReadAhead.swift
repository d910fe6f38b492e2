#if canImport(Glibc)
import Glibc
#endif
import CBlockShims
import Synchronization

/// Read-ahead for reads served from a file's shared mapping when the file lives on a device.
///
/// The mapping is `MADV_RANDOM`, so a fault on a cold page reads that page and nothing around it
/// (without it, the kernel reads around every fault by the device's read-ahead size: 8 MiB of disk
/// for a 4 KiB request). Requests are asked for up front with `POSIX_FADV_WILLNEED`, which starts
/// reads of exactly their range without waiting, so the requests of a batch are read from the device
/// side by side before `sendmsg` touches their pages: large requests always, small ones while the
/// file is found cold (one small request in `probeInterval` checks its page with `mincore`; a miss
/// turns prefetching on for the next `coldCredit` small requests), so that reads of cached pages
/// make no extra system call. Streams of requests that follow each other get an asynchronous window
/// ahead of them, doubling up to `maxWindow`, as the kernel gives sequential `pread`s.
final class ReadAhead: Sendable {
    /// One sequential stream: where its next request is expected, how far ahead has been asked for.
    private struct Stream {
        var next: UInt64 = 0
        var aheadUntil: UInt64 = 0
        var window: UInt64 = 0
        var lastUse: UInt64 = 0
    }

    private struct State {
        var streams = [Stream](repeating: Stream(), count: ReadAhead.streamSlots)
        var clock: UInt64 = 0
    }

    /// Requests at least this long are always prefetched whole.
    static let wholeRequestMinimum = 16 << 10
    /// One small request in this many probes the page cache.
    static let probeInterval: UInt32 = 16
    /// Small requests prefetched after a probe found a page missing.
    static let coldCredit = 256
    /// The first window of a stream, and the largest.
    static let initialWindow: UInt64 = 256 << 10
    static let maxWindow: UInt64 = 8 << 20
    /// Streams followed at once (connections reading sequentially side by side).
    static let streamSlots = 8

    private let fd: Int32
    /// Where the file is mapped, for the residency probe.
    private let mapping: UInt
    private let state = Mutex(State())
    private let requests = Atomic<UInt32>(0)
    private let credit = Atomic<Int>(0)

    init(fd: Int32, mapping: UInt) {
        self.fd = fd
        self.mapping = mapping
    }

    /// True when reads of `fd` come from a device (not tmpfs or ramfs, whose pages are the file).
    static func isDeviceBacked(fd: Int32) -> Bool {
        var type: Int64 = 0
        guard blk_fs_type(fd, &type) == 0 else { return false }
        let tmpfs: Int64 = 0x0102_1994, ramfs: Int64 = 0x8584_58f6
        return type != tmpfs && type != ramfs
    }

    /// Tells the mapping that faults must not read around them.
    static func adviseRandom(_ base: UnsafeMutableRawPointer, length: Int) {
        _ = madvise(base, length, MADV_RANDOM)
    }

    /// Called before a request's bytes are sent from the mapping.
    func willRead(at offset: UInt64, length: Int) {
        if length >= ReadAhead.wholeRequestMinimum || smallRequestIsCold(at: offset) {
            _ = posix_fadvise(fd, off_t(offset), off_t(length), POSIX_FADV_WILLNEED)
        }
        let end = offset + UInt64(length)
        let ahead = state.withLock { state -> (UInt64, UInt64)? in
            state.clock += 1
            var oldest = 0
            for index in state.streams.indices {
                if state.streams[index].next == offset && offset != 0 {
                    return ReadAhead.advance(&state.streams[index], to: end, request: UInt64(length), clock: state.clock)
                }
                if state.streams[index].lastUse < state.streams[oldest].lastUse { oldest = index }
            }
            // Not a continuation: remember where this request ends, in case the next one follows it.
            state.streams[oldest] = Stream(next: end, aheadUntil: end, window: 0, lastUse: state.clock)
            return nil
        }
        if let (start, count) = ahead {
            _ = posix_fadvise(fd, off_t(start), off_t(count), POSIX_FADV_WILLNEED)
        }
    }

    /// Whether a small request should be prefetched: yes while credit from a recent miss lasts; else
    /// every `probeInterval`-th request asks `mincore` whether its first page is cached.
    private func smallRequestIsCold(at offset: UInt64) -> Bool {
        if credit.load(ordering: .relaxed) > 0 {
            credit.subtract(1, ordering: .relaxed)
            return true
        }
        guard requests.wrappingAdd(1, ordering: .relaxed).newValue % ReadAhead.probeInterval == 0 else { return false }
        let page = UInt64(ReadAhead.pageSize)
        var resident: UInt8 = 0
        guard let address = UnsafeMutableRawPointer(bitPattern: mapping + UInt(offset / page * page)),
              mincore(address, Int(page), &resident) == 0 else { return false }
        if resident & 1 != 0 { return false }
        credit.store(ReadAhead.coldCredit, ordering: .relaxed)
        return true
    }

    private static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// Moves a stream past a request that continued it; the range to prefetch when its window needs
    /// topping up (once half of it has been consumed).
    private static func advance(_ stream: inout Stream, to end: UInt64, request: UInt64, clock: UInt64) -> (UInt64, UInt64)? {
        stream.next = end
        stream.lastUse = clock
        let window = min(max(stream.window == 0 ? initialWindow : stream.window, request * 4), maxWindow)
        guard stream.aheadUntil < end + window / 2 else { return nil }
        let start = max(stream.aheadUntil, end)
        stream.window = min(window * 2, maxWindow)
        stream.aheadUntil = end + stream.window
        return (start, stream.aheadUntil - start)
    }
}
