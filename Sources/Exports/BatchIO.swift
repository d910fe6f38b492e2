import BlockCore
import NBDProtocol

/// The reads and writes of a batch handed to the connection's I/O engine (`aio=native`), waiting for
/// their completions, and the aligned buffers engine reads land in (they are sent from directly, so
/// they live until the batch's output was sent).
final class BatchIO {
    /// A read or write handed to the engine.
    struct Pending {
        var header: RequestHeader
        var buffer: UnsafeMutableRawPointer
        var isRead: Bool
        var started: UInt64
    }

    private let factory: IOBatchEngineFactory?
    private var engine: (any IOBatchEngine)?
    private var engineTried = false
    private var pending: [Pending] = []
    private var buffers: [AlignedBuffer] = []
    private var buffersUsed = 0

    /// Uses engines made by `factory` (none: every request runs synchronously).
    init(factory: IOBatchEngineFactory?) { self.factory = factory }

    /// True when requests may be handed to an engine at all.
    @inline(__always)
    var isAvailable: Bool { factory != nil }

    /// True when nothing waits for a completion.
    @inline(__always)
    var isIdle: Bool { pending.isEmpty }

    /// The connection's engine, created on first use; nil when there is none.
    func currentEngine() -> (any IOBatchEngine)? {
        if !engineTried {
            engineTried = true
            engine = factory?()
        }
        return engine
    }

    /// The next free buffer of the pool, large enough for `count` bytes; it stays free until `takeBuffer`.
    func nextBuffer(_ count: Int) -> UnsafeMutableRawPointer {
        if buffersUsed == buffers.count { buffers.append(AlignedBuffer(capacity: count)) }
        let buffer = buffers[buffersUsed]
        buffer.reserve(count)
        return buffer.bytes.baseAddress!
    }

    /// Takes the buffer `nextBuffer` returned, until `releaseBuffers`.
    func takeBuffer() { buffersUsed += 1 }

    /// Gives every buffer back to the pool (once the output that points into them was sent).
    @inline(__always)
    func releaseBuffers() { buffersUsed = 0 }

    /// Queues a read of `request.header.length` bytes into `request.buffer`; false when the engine is full.
    func queueRead(_ target: DirectTarget, _ request: Pending, engine: any IOBatchEngine) -> Bool {
        guard engine.queueRead(target, into: request.buffer, length: Int(request.header.length), token: pending.count) else { return false }
        pending.append(request)
        return true
    }

    /// Queues a write of `length` bytes from `request.buffer`; false when the engine is full.
    func queueWrite(_ target: DirectTarget, _ request: Pending, length: Int, engine: any IOBatchEngine) -> Bool {
        let fua = request.header.commandFlags.contains(.fua)
        guard engine.queueWrite(target, from: request.buffer, length: length, fua: fua, token: pending.count) else { return false }
        pending.append(request)
        return true
    }

    /// Runs everything queued and reports each request with its result (bytes done, or `-errno`) in
    /// the order they complete.
    func complete(_ body: (Pending, Int32) -> Void) {
        guard !pending.isEmpty, let engine else { return }
        engine.complete { token, result in body(pending[token], result) }
        pending.removeAll(keepingCapacity: true)
    }
}
