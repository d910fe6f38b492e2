import BlockCore
import NBDProtocol
import LogOptionsClock

/// The device policies on the request path: admission (throttling, pausing) before a request runs,
/// and the rerror/werror policy after one failed, with the replies of failed requests. Both are off
/// the fast path: a device without a throttle that is not paused costs the `guarded` branch; a
/// request that succeeds costs nothing.
extension RequestExecutor {
    /// Fails a request because the device has no medium (removed, or the tray is open): EIO, as QEMU's ENOMEDIUM reaches a guest.
    func replyNoMedium(_ header: RequestHeader) {
        requestFailed = true
        replies.status(header, error: NBDError.io.rawValue)
    }

    /// Replies with the wire form of a storage error, and logs it with the node and the request.
    func replyFailure(_ header: RequestHeader, _ error: BlockError) {
        requestFailed = true
        Log.warning("\(peer): node '\(node.name)': \(header.command.map { "\($0)" } ?? "command \(header.type)") at \(header.offset)+\(header.length) failed: \(error.message)")
        replies.status(header, error: RequestCheck.wireError(error))
    }

    /// Runs an operation whose reply carries no payload and answers it; a failure goes through the error policy.
    @inline(__always)
    func complete(_ header: RequestHeader, _ operation: () throws(BlockError) -> Void) {
        do {
            try operation()
            replies.status(header, error: 0)
        } catch {
            if recover(header, error, isWrite: header.command != .cache, flushFirst: true, retry: operation) {
                replies.status(header, error: 0)
            }
        }
    }

    /// Flushes the node once for the batch's FLUSH requests and answers each of them. Runs as the
    /// output is about to be sent: every write a FLUSH follows has completed by then.
    func runDeferredFlushes() {
        let flushes = deferredFlushes
        deferredFlushes.removeAll(keepingCapacity: true)
        var failure: BlockError?
        do throws(BlockError) {
            try node.flush()
        } catch {
            failure = error
        }
        for (header, started) in flushes {
            requestFailed = false
            if let failure {
                if recover(header, failure, isWrite: true, flushFirst: false, retry: { () throws(BlockError) in try node.flush() }) {
                    replies.status(header, error: 0)
                }
            } else {
                replies.status(header, error: 0)
            }
            stats.done(.flush, started: started, bytes: 0, offset: header.offset, failed: requestFailed)
        }
    }

    /// Waits until the device admits a request: while it is paused, and for reads and writes
    /// (`isWrite` non-nil) until its throttle group allows `bytes`. Finished replies go out first.
    @inline(never)
    func admit(isWrite: Bool?, bytes: UInt64) {
        backend.admit(isWrite: isWrite, bytes: bytes) { flushOutput() }
    }

    /// Applies the device's error policy to a failed request. Returns true when the request is to be
    /// answered as a success (ignored, or retried successfully after the device was resumed); false
    /// when the failure was replied. With `flushFirst`, finished replies go out before a pause (not
    /// allowed while output for this request is reserved, or while the engine's completions run).
    @inline(never)
    func recover(
        _ header: RequestHeader, _ error: BlockError, isWrite: Bool, flushFirst: Bool, retry: () throws(BlockError) -> Void
    ) -> Bool {
        var failure = error
        while true {
            switch backend.handleError(errno: failure.errno, message: failure.message, isWrite: isWrite) {
            case .report:
                replyFailure(header, failure)
                return false
            case .ignore:
                Log.warning("\(peer): \(header.command.map { "\($0)" } ?? "command") at \(header.offset)+\(header.length) failed and was ignored (error policy 'ignore'): \(failure.message)")
                return true
            case .stop:
                if flushFirst { flushOutput() }
                backend.waitWhilePaused()
                do {
                    try retry()
                    return true
                } catch {
                    failure = error
                }
            }
        }
    }
}
