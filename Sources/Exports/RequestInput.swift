#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import Sockets

/// The bytes a connection received and has not consumed yet: request headers and the write payloads
/// that follow them, read in large batches so that many requests come with one system call.
final class RequestInput {
    /// Capacity: a 1 MiB write and its header fit without a second buffer.
    static let capacity = (1 << 20) + 4096

    private let io: SocketIO
    private let buffer = AlignedBuffer(capacity: RequestInput.capacity)
    private var start = 0
    private var end = 0
    /// Holds a payload larger than `buffer`; reused for the next one.
    private var largePayload: AlignedBuffer?

    /// Reads from `io`.
    init(io: SocketIO) { self.io = io }

    /// The bytes received and not consumed yet.
    @inline(__always)
    var unread: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: buffer.bytes.baseAddress! + start, count: end - start)
    }

    /// True when part of a request was received: the client is in the middle of sending it.
    @inline(__always)
    var hasUnread: Bool { end > start }

    /// True when the socket has bytes to receive right now (plain sockets; under TLS, false).
    var isReadable: Bool {
        guard io.tls == nil else { return false }
        var descriptor = pollfd(fd: io.fd, events: Int16(POLLIN), revents: 0)
        return poll(&descriptor, 1, 0) == 1 && descriptor.revents & Int16(POLLIN) != 0
    }

    /// Marks `count` bytes of `unread` as used.
    @inline(__always)
    func consume(_ count: Int) { start += count }

    /// Blocks until more bytes arrive; false when the stream ended. Moves the unread bytes, so
    /// pointers into the buffer must not be used afterwards.
    func receiveMore() -> Bool {
        if start == end {
            start = 0
            end = 0
        } else if start > 0 && buffer.capacity - end < 64 * 1024 {
            compact()
        }
        guard let received = io.receive(into: buffer.bytes.baseAddress! + end, count: buffer.capacity - end),
              received > 0 else { return false }
        end += received
        return true
    }

    private func compact() {
        let unread = end - start
        if unread > 0 {
            memmove(buffer.bytes.baseAddress!, buffer.bytes.baseAddress! + start, unread)
        }
        start = 0
        end = unread
    }

    /// The next `count` bytes when they were all received already, consumed; nil otherwise.
    @inline(__always)
    func bufferedPayload(_ count: Int) -> UnsafeRawBufferPointer? {
        guard end - start >= count else { return nil }
        defer { start += count }
        return UnsafeRawBufferPointer(start: buffer.bytes.baseAddress! + start, count: count)
    }

    /// The next `count` bytes, blocking until they arrived, consumed; nil when the stream ended
    /// first. Valid until the next request is read. May move the unread bytes (see `receiveMore`).
    func receivePayload(_ count: Int) -> UnsafeRawBufferPointer? {
        if count <= buffer.capacity {
            if buffer.capacity - start < count { compact() }
            while end - start < count {
                guard let received = io.receive(into: buffer.bytes.baseAddress! + end, count: buffer.capacity - end),
                      received > 0 else { return nil }
                end += received
            }
            defer { start += count }
            return UnsafeRawBufferPointer(start: buffer.bytes.baseAddress! + start, count: count)
        }
        let unread = end - start
        let large = largePayload ?? AlignedBuffer(capacity: count)
        large.reserve(count)
        largePayload = large
        memcpy(large.bytes.baseAddress!, buffer.bytes.baseAddress! + start, unread)
        start = end
        guard io.receiveExactly(into: large.bytes.baseAddress! + unread, count: count - unread) else { return nil }
        return UnsafeRawBufferPointer(start: large.bytes.baseAddress!, count: count)
    }

    /// True when `payload` lies in the buffer of large payloads, which the next large payload reuses.
    @inline(__always)
    func isLargePayload(_ payload: UnsafeRawBufferPointer) -> Bool {
        largePayload != nil && UnsafeRawPointer(largePayload!.bytes.baseAddress) == payload.baseAddress
    }

    /// Reads and drops the next `count` bytes; false when the stream ended first.
    func skip(_ count: UInt64) -> Bool {
        let fromBuffer = min(UInt64(end - start), count)
        start += Int(fromBuffer)
        return io.discard(count - fromBuffer)
    }
}
