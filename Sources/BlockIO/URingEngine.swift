#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import CURing
import LogOptionsClock

/// The io_uring engine (`aio=native`): a ring per connection thread; a batch of reads and writes is
/// submitted, and waited for, with one `io_uring_enter`.
public final class URingEngine: IOBatchEngine {
    /// Submission queue depth: the most operations in one batch.
    public static let depth = 64
    private let ring: OpaquePointer
    private var queued = 0
    /// How many of the queued operations `submit` already started.
    private var submitted = 0
    private var queuedTokens: [Int] = []
    private var broken = false
    private var tokens = [UInt64](repeating: 0, count: URingEngine.depth)
    private var results = [Int32](repeating: 0, count: URingEngine.depth)

    /// Creates a ring; nil when the kernel refuses io_uring (then the synchronous path is used).
    public init?() {
        var error: Int32 = 0
        guard let ring = blk_ring_create(UInt32(URingEngine.depth), &error) else { return nil }
        self.ring = ring
    }

    /// True when this kernel lets the process create a ring.
    public static var isAvailable: Bool { URingEngine() != nil }

    deinit { blk_ring_destroy(ring) }

    public func queueRead(_ target: DirectTarget, into buffer: UnsafeMutableRawPointer, length: Int, token: Int) -> Bool {
        guard !broken, queued < URingEngine.depth,
              blk_ring_prep(ring, Int32(BLK_RING_READ.rawValue), target.fd, buffer, UInt32(length), target.offset, 0, UInt64(token)) == 0
        else { return false }
        queued += 1
        queuedTokens.append(token)
        return true
    }

    public func queueWrite(_ target: DirectTarget, from buffer: UnsafeRawPointer, length: Int, fua: Bool, token: Int) -> Bool {
        guard !broken, queued < URingEngine.depth,
              blk_ring_prep(ring, Int32(BLK_RING_WRITE.rawValue), target.fd, UnsafeMutableRawPointer(mutating: buffer),
                            UInt32(length), target.offset, fua ? 1 : 0, UInt64(token)) == 0
        else { return false }
        queued += 1
        queuedTokens.append(token)
        return true
    }

    public func submit() {
        guard !broken, queued > submitted else { return }
        if blk_ring_submit_wait(ring, 0) >= 0 { submitted = queued }
    }

    public func complete(_ completion: (Int, Int32) -> Void) {
        var outstanding = Set(queuedTokens)
        queued = 0
        submitted = 0
        queuedTokens.removeAll(keepingCapacity: true)
        while !outstanding.isEmpty {
            let status = blk_ring_submit_wait(ring, 1)
            if status < 0 && status != -EAGAIN && status != -EBUSY {
                // The ring itself failed (not one operation): fail what is left and stop using it.
                Log.error("io_uring_enter failed: \(String(cString: strerror(-status))); falling back to synchronous I/O")
                broken = true
                for token in outstanding { completion(token, -EIO) }
                return
            }
            let count = Int(blk_ring_reap(ring, &tokens, &results, Int32(URingEngine.depth)))
            for index in 0..<count {
                outstanding.remove(Int(tokens[index]))
                completion(Int(tokens[index]), results[index])
            }
        }
    }
}
