#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock
import NBDProtocol
import Sockets

/// The replies of a batch, sent with one system call: bytes written into one buffer, with data in
/// mapped memory (a file's page cache, engine read buffers) spliced in between as extra iovecs, so
/// that a READ's payload is never copied to get to the socket.
final class ReplyBuffer {
    /// Output sent early once it holds this much.
    static let flushThreshold = 4 << 20
    /// Most mapped segments held before the output is sent.
    static let maxMapped = 256

    /// The connection's reply framing.
    let style: ReplyStyle
    private let output = AlignedBuffer(capacity: 256 * 1024)
    /// Bytes written into the output buffer.
    private(set) var length = 0
    /// Mapped data that follows byte `at` of the output buffer.
    private var mapped: [(at: Int, base: UnsafeRawPointer, count: Int)] = []
    private var mappedBytes = 0
    private let vectors = UnsafeMutableBufferPointer<iovec>.allocate(capacity: 2 * ReplyBuffer.maxMapped + 1)

    /// An empty buffer for replies in `style`.
    init(style: ReplyStyle) {
        self.style = style
        mapped.reserveCapacity(ReplyBuffer.maxMapped)
    }

    deinit { vectors.deallocate() }

    /// True when nothing is queued.
    @inline(__always)
    var isEmpty: Bool { length == 0 }

    /// True when the output should be sent before more is queued.
    @inline(__always)
    var isFull: Bool { length + mappedBytes >= ReplyBuffer.flushThreshold || mapped.count >= ReplyBuffer.maxMapped }

    /// True when `count` more mapped segments would exceed what one send takes.
    @inline(__always)
    func lacksRoom(forMapped count: Int) -> Bool { mapped.count + count > ReplyBuffer.maxMapped }

    /// Room for `count` more bytes at the end of the output; returns where they start. They count
    /// once `commit` is called.
    @inline(__always)
    func reserve(_ count: Int) -> UnsafeMutableRawPointer {
        if output.capacity - length < count {
            output.reserve(length + count, preserving: length)
        }
        return output.bytes.baseAddress! + length
    }

    /// Adds `count` bytes written at `reserve`'s address to the output.
    @inline(__always)
    func commit(_ count: Int) { length += count }

    /// Where byte `position` of the output is (valid until the next `reserve`).
    @inline(__always)
    func address(of position: Int) -> UnsafeMutableRawPointer { output.bytes.baseAddress! + position }

    /// Queues `count` bytes of mapped memory to follow the output written so far.
    @inline(__always)
    func appendMapped(_ base: UnsafeRawPointer, count: Int) {
        mapped.append((length, base, count))
        mappedBytes += count
    }

    /// Forgets output (and mapped segments) queued after `position`, to replace a failed reply.
    func truncate(to position: Int) {
        while let last = mapped.last, last.at > position {
            mappedBytes -= last.count
            mapped.removeLast()
        }
        length = position
    }

    /// A reply without payload to `header`: success (`error` 0) or an error.
    @inline(__always)
    func status(_ header: RequestHeader, error: UInt32) {
        let needsChunk = header.type == NBDCommand.read.rawValue || header.type == NBDCommand.blockStatus.rawValue
        length += StatusReply.write(
            style: style, needsChunk: needsChunk, error: error, cookie: header.cookie, offset: header.offset,
            to: reserve(StatusReply.maxSize(style)))
    }

    /// Sends everything queued on `io` and empties the buffer. When mapped memory cannot be read
    /// (an I/O error, or the file was truncated behind our back), part of a reply may be out: the
    /// stream cannot be trusted any more, so it is shut down.
    func send(on io: SocketIO) {
        guard length > 0 else { return }
        if mapped.isEmpty {
            _ = io.sendAll(output.bytes.baseAddress!, count: length)
        } else {
            let base = output.bytes.baseAddress!
            var count = 0
            var position = 0
            for segment in mapped {
                if segment.at > position {
                    vectors[count] = iovec(iov_base: base + position, iov_len: segment.at - position)
                    count += 1
                    position = segment.at
                }
                vectors[count] = iovec(iov_base: UnsafeMutableRawPointer(mutating: segment.base), iov_len: segment.count)
                count += 1
            }
            if length > position {
                vectors[count] = iovec(iov_base: base + position, iov_len: length - position)
                count += 1
            }
            if !io.sendAll(UnsafeMutableBufferPointer(rebasing: vectors[0..<count])) && errno == EFAULT {
                Log.error("sending mapped data failed (I/O error or truncated image); dropping the connection")
                shutdown(io.fd, Int32(SHUT_RDWR))
            }
            mapped.removeAll(keepingCapacity: true)
            mappedBytes = 0
        }
        length = 0
    }
}
