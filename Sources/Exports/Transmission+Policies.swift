import BlockCore
import NBDProtocol

/// The device policies on the request path: admission (throttling, pausing) before a request runs,
/// and the rerror/werror policy after one failed. Both are off the fast path: a device without a
/// throttle that is not paused costs the `guarded` branch; a request that succeeds costs nothing.
extension Transmission {
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
