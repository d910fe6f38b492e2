#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import CLibNBD

/// One command sent to the remote server, kept until its result is posted so that it can be sent
/// again on a new connection when the server went away (`reconnect-delay`).
final class NBDRequest: @unchecked Sendable {
    /// The NBD command.
    enum Kind: String {
        case read, write, flush, trim, zero
        case blockStatus = "block status"
    }

    let kind: Kind
    let buffer: UnsafeMutableRawPointer?
    let length: UInt64
    let offset: UInt64
    /// libnbd command flags (`LIBNBD_CMD_FLAG_*`).
    let flags: UInt32
    let token: Int
    let completions: AsyncCompletions
    /// The driver that retries the request when its connection dies.
    let driver: NBDClientDriver
    /// The connection it was last sent on (not owned: a callback must never drop a handle's last reference).
    var connection: ObjectIdentifier?
    /// `base:allocation` extents received: (length, flags).
    var allocation: [(length: UInt64, flags: UInt32)] = []
    /// `qemu:allocation-depth` extents received: (length, depth).
    var depth: [(length: UInt64, depth: UInt32)] = []

    init(_ kind: Kind, buffer: UnsafeMutableRawPointer?, length: UInt64, offset: UInt64, flags: UInt32,
         token: Int, completions: AsyncCompletions, driver: NBDClientDriver) {
        self.kind = kind
        self.buffer = buffer
        self.length = length
        self.offset = offset
        self.flags = flags
        self.token = token
        self.completions = completions
        self.driver = driver
    }

    /// The result posted on success: the bytes moved by a read or write, 0 otherwise.
    var successResult: Int32 {
        kind == .read || kind == .write ? Int32(length) : 0
    }

    /// Sends the request on `handle`; returns 0, or the errno of a request libnbd refused at once.
    func issue(on handle: OpaquePointer) -> Int32 {
        allocation.removeAll()
        depth.removeAll()
        let user = Unmanaged.passRetained(self).toOpaque()
        let completion = nbd_completion_callback(callback: nbdRequestCompleted, user_data: user, free: nil)
        let cookie: Int64
        switch kind {
        case .read:
            cookie = nbd_aio_pread(handle, buffer, Int(length), offset, completion, 0)
        case .write:
            cookie = nbd_aio_pwrite(handle, buffer, Int(length), offset, completion, flags)
        case .flush:
            cookie = nbd_aio_flush(handle, completion, 0)
        case .trim:
            cookie = nbd_aio_trim(handle, length, offset, completion, flags)
        case .zero:
            cookie = nbd_aio_zero(handle, length, offset, completion, flags)
        case .blockStatus:
            let extents = nbd_extent_callback(callback: nbdExtentsReceived, user_data: user, free: nil)
            cookie = nbd_aio_block_status(handle, length, offset, extents, completion, 0)
        }
        guard cookie < 0 else { return 0 }
        Unmanaged<NBDRequest>.fromOpaque(user).release()
        let code = nbd_get_errno()
        return code > 0 ? code : EIO
    }

    /// Records the extents of one meta context.
    func received(context: String, entries: UnsafeBufferPointer<UInt32>) {
        var index = 0
        while index + 1 < entries.count {
            let length = UInt64(entries[index])
            let value = entries[index + 1]
            if context == "base:allocation" {
                allocation.append((length, value))
            } else if context == "qemu:allocation-depth" {
                depth.append((length, value))
            }
            index += 2
        }
    }
}

/// libnbd's completion callback: hands the result to the driver (runs on the thread that drives the handle).
private func nbdRequestCompleted(_ user: UnsafeMutableRawPointer?, _ error: UnsafeMutablePointer<Int32>?) -> Int32 {
    let request = Unmanaged<NBDRequest>.fromOpaque(user!).takeRetainedValue()
    request.driver.finished(request, error: error?.pointee ?? 0)
    return 1
}

/// libnbd's extent callback for block status.
private func nbdExtentsReceived(_ user: UnsafeMutableRawPointer?, _ context: UnsafePointer<CChar>?, _ offset: UInt64,
                                _ entries: UnsafeMutablePointer<UInt32>?, _ count: Int, _ error: UnsafeMutablePointer<Int32>?) -> Int32 {
    let request = Unmanaged<NBDRequest>.fromOpaque(user!).takeUnretainedValue()
    guard let context, let entries else { return 0 }
    request.received(context: String(cString: context), entries: UnsafeBufferPointer(start: entries, count: count))
    return 0
}
