#if canImport(Glibc)
import Glibc
#endif
import CBlockShims
import LogOptionsClock

/// Blocking socket I/O on one connected descriptor, optionally bounded by a deadline for the whole
/// exchange (the handshake's), so that a client dripping bytes cannot stretch it.
public struct SocketIO: Sendable {
    /// The connected descriptor.
    public let fd: Int32
    /// Monotonic seconds after which every receive and send fails.
    public var deadline: Double?
    /// The TLS session records go through once `NBD_OPT_STARTTLS` succeeded (nil: plain, or kernel TLS).
    public var tls: TLSChannel?

    /// Wraps a connected descriptor.
    public init(fd: Int32, deadline: Double? = nil) {
        self.fd = fd
        self.deadline = deadline
    }

    /// Arms the socket's timeouts with the time left; false when none is left.
    public func arm() -> Bool {
        guard let deadline else { return true }
        let left = deadline - MonotonicClock.seconds()
        guard left > 0 else { return false }
        let milliseconds = max(1, Int64(left * 1000))
        return blk_set_recv_timeout(fd, milliseconds) == 0 && blk_set_send_timeout(fd, milliseconds) == 0
    }

    /// Clears the timeouts a deadline set.
    public func disarm() {
        _ = blk_set_recv_timeout(fd, 0)
        _ = blk_set_send_timeout(fd, 0)
    }

    /// Receives up to `count` bytes; 0 means the peer closed, nil an error (including a timeout).
    @inline(__always)
    public func receive(into base: UnsafeMutableRawPointer, count: Int) -> Int? {
        if deadline != nil && !arm() { return nil }
        if let tls { return tls.receive(into: base, count: count) }
        while true {
            let result = recv(fd, base, count, 0)
            if result >= 0 { return result }
            if errno != EINTR { return nil }
        }
    }

    /// Receives exactly `count` bytes; false on end of stream or error.
    public func receiveExactly(into base: UnsafeMutableRawPointer, count: Int) -> Bool {
        var done = 0
        while done < count {
            guard let received = receive(into: base + done, count: count - done), received > 0 else { return false }
            done += received
        }
        return true
    }

    /// Receives exactly `count` bytes into a new array.
    public func receiveBytes(_ count: Int) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        let ok = bytes.withUnsafeMutableBytes { count == 0 || receiveExactly(into: $0.baseAddress!, count: count) }
        return ok ? bytes : nil
    }

    /// Reads and drops `count` bytes, in chunks; false on end of stream or error.
    public func discard(_ count: UInt64) -> Bool {
        var scratch = [UInt8](repeating: 0, count: 64 * 1024)
        var left = count
        return scratch.withUnsafeMutableBytes { buffer in
            while left > 0 {
                let chunk = Int(min(left, UInt64(buffer.count)))
                guard let received = receive(into: buffer.baseAddress!, count: chunk), received > 0 else { return false }
                left -= UInt64(received)
            }
            return true
        }
    }

    /// Sends every byte; false when the peer is gone.
    @inline(__always)
    public func sendAll(_ base: UnsafeRawPointer, count: Int) -> Bool {
        if let tls {
            if deadline != nil && !arm() { return false }
            return tls.send(base, count: count)
        }
        var done = 0
        while done < count {
            if deadline != nil && !arm() { return false }
            let sent = send(fd, base + done, count - done, Int32(MSG_NOSIGNAL))
            if sent > 0 {
                done += sent
            } else if sent < 0 && errno == EINTR {
                continue
            } else {
                return false
            }
        }
        return true
    }

    /// Sends every byte of the vectors, advancing past partial sends; false when the peer is gone.
    /// The vectors are consumed (modified) in place.
    public func sendAll(_ vectors: UnsafeMutableBufferPointer<iovec>) -> Bool {
        if let tls { return tls.send(vectors) }
        var first = 0
        while first < vectors.count {
            var message = msghdr()
            message.msg_iov = vectors.baseAddress! + first
            message.msg_iovlen = min(vectors.count - first, 1024)
            let sent = sendmsg(fd, &message, Int32(MSG_NOSIGNAL))
            if sent < 0 {
                if errno == EINTR { continue }
                return false
            }
            var left = sent
            while left > 0 && first < vectors.count {
                let length = vectors[first].iov_len
                if left >= length {
                    left -= length
                    first += 1
                } else {
                    vectors[first].iov_base += left
                    vectors[first].iov_len -= left
                    left = 0
                }
            }
            while first < vectors.count && vectors[first].iov_len == 0 { first += 1 }
        }
        return true
    }

    /// Sends an array.
    public func sendAll(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { $0.isEmpty || sendAll($0.baseAddress!, count: $0.count) }
    }
}
