import BlockCore

/// The batch engine of a connection thread: file targets go to io_uring (when the kernel has it),
/// asynchronous drivers (a remote NBD server) get the batch's requests at once; `complete` waits for both.
public final class CombinedEngine: IOBatchEngine {
    private let ring: URingEngine?
    private let completions = AsyncCompletions()
    private var remoteOutstanding = 0

    /// Wraps `ring` (nil when io_uring is not available: file targets then take the synchronous path).
    public init(ring: URingEngine?) {
        self.ring = ring
    }

    public func queueRead(_ target: DirectTarget, into buffer: UnsafeMutableRawPointer, length: Int, token: Int) -> Bool {
        if let remote = target.remote {
            remote.submitRead(into: buffer, length: length, at: target.offset, token: token, completions: completions)
            remoteOutstanding += 1
            return true
        }
        return ring?.queueRead(target, into: buffer, length: length, token: token) ?? false
    }

    public func queueWrite(_ target: DirectTarget, from buffer: UnsafeRawPointer, length: Int, fua: Bool, token: Int) -> Bool {
        if let remote = target.remote {
            remote.submitWrite(from: buffer, length: length, at: target.offset, fua: fua, token: token, completions: completions)
            remoteOutstanding += 1
            return true
        }
        return ring?.queueWrite(target, from: buffer, length: length, fua: fua, token: token) ?? false
    }

    public func submit() {
        ring?.submit()
    }

    public func complete(_ completion: (Int, Int32) -> Void) {
        ring?.complete(completion)
        guard remoteOutstanding > 0 else { return }
        let count = remoteOutstanding
        remoteOutstanding = 0
        completions.wait(for: count, completion)
    }
}
