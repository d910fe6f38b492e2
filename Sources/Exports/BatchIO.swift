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
    /// Queued writes whose payload is still in the connection's input (not copied to a pool buffer).
    private var inputWrites = 0
    /// Bytes of the pool buffers taken since `releaseBuffers`.
    private var takenBytes = 0

    /// Most bytes of pool buffers in use before the batch must be completed and its replies sent.
    static let maxTakenBytes = 16 << 20

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
    func takeBuffer() {
        takenBytes += buffers[buffersUsed].capacity
        buffersUsed += 1
    }

    /// Gives every buffer back to the pool (once the output that points into them was sent).
    @inline(__always)
    func releaseBuffers() {
        buffersUsed = 0
        takenBytes = 0
    }

    /// True when queued I/O may keep running while more requests are received: none of it writes
    /// from the input, and the pool buffers it holds stay within `maxTakenBytes`.
    var mayReceiveWhileRunning: Bool { inputWrites == 0 && takenBytes < BatchIO.maxTakenBytes }

    /// Starts the queued I/O without waiting for it.
    func submit() {
        engine?.submit()
    }

    /// Queues a read of `request.header.length` bytes into `request.buffer`; false when the engine is full.
    func queueRead(_ target: DirectTarget, _ request: Pending, engine: any IOBatchEngine) -> Bool {
        guard engine.queueRead(target, into: request.buffer, length: Int(request.header.length), token: pending.count) else { return false }
        pending.append(request)
        return true
    }

    /// Queues a write of `length` bytes from `request.buffer`; false when the engine is full.
    /// `fromInput`: the payload is still in the connection's input.
    func queueWrite(_ target: DirectTarget, _ request: Pending, length: Int, fromInput: Bool, engine: any IOBatchEngine) -> Bool {
        let fua = request.header.commandFlags.contains(.fua)
        guard engine.queueWrite(target, from: request.buffer, length: length, fua: fua, token: pending.count) else { return false }
        pending.append(request)
        if fromInput { inputWrites += 1 }
        return true
    }

    /// Runs everything queued and reports each request with its result (bytes done, or `-errno`) in
    /// the order they complete.
    func complete(_ body: (Pending, Int32) -> Void) {
        guard !pending.isEmpty, let engine else { return }
        engine.complete { token, result in body(pending[token], result) }
        pending.removeAll(keepingCapacity: true)
        inputWrites = 0
    }
}
