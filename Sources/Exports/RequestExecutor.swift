#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock
import NBDProtocol
import Sockets

/// Runs the requests of one connection on its thread, against the device's current medium, and
/// queues their replies: synchronously, through the batch engine, or (FLUSH) once per batch. The
/// READ path is in `RequestExecutor+Read.swift`, admission and the error policy in
/// `RequestExecutor+Policies.swift`.
final class RequestExecutor {
    let io: SocketIO
    let peer: String
    let session: NegotiatedSession
    /// The device served; its medium is looked up again after every tray or medium change.
    let backend: BlockBackend
    let stats: BlockStats
    let style: ReplyStyle
    /// The replies of the current batch.
    let replies: ReplyBuffer
    let batch: BatchIO
    /// The medium requests go to (nil: none inserted, or the tray is open), as of `generation`.
    private(set) var medium: BlockBackend.Medium?
    private var generation: UInt64
    /// Whether requests must pass the device's `admit` (throttled or paused), as of `generation`.
    private var guarded: Bool
    /// Set by `replyFailure` while a request runs, for its accounting.
    var requestFailed = false
    /// FLUSH requests of this batch, answered together after one flush of the node just before the
    /// output is sent (see `runDeferredFlushes`), with when each started.
    var deferredFlushes: [(header: RequestHeader, started: UInt64)] = []
    /// Adjacent TRIM or WRITE_ZEROES requests of this batch, run as one (see `RequestExecutor+Ranges.swift`).
    var deferredRange: DeferredRange?
    /// Pieces of a read that lies in several mapped places (a fragmented qcow2 range); reused.
    var mappedRuns: [UnsafeRawBufferPointer] = []

    init(io: SocketIO, peer: String, session: NegotiatedSession, engineFactory: IOBatchEngineFactory?) {
        self.io = io
        self.peer = peer
        self.session = session
        self.backend = session.export.backend
        (self.medium, self.generation) = backend.current()
        self.guarded = backend.needsAdmission
        self.stats = backend.stats
        self.style = session.style
        self.replies = ReplyBuffer(style: session.style)
        self.batch = BatchIO(factory: engineFactory)
    }

    /// The medium's node; only used once a request has checked that there is a medium.
    @inline(__always)
    var node: BlockNode { medium.unsafelyUnwrapped.node }

    /// Picks up a tray or medium change before a request: one atomic load when nothing changed.
    @inline(__always)
    func followMedium() {
        if backend.generation != generation { switchMedium() }
    }

    /// Sends what is queued for the old medium (mapped data and engine I/O included), then takes the new one.
    @inline(never)
    private func switchMedium() {
        flushOutput()
        (medium, generation) = backend.current()
        guarded = backend.needsAdmission
    }

    /// Completes the batch (engine I/O, deferred flushes) and sends its replies. The replies that are
    /// ready go out before a deferred flush runs, so that the client can send more while it does.
    func flushOutput() {
        drainPending()
        if deferredRange != nil { runDeferredRange() }
        if !deferredFlushes.isEmpty {
            replies.send(on: io)
            runDeferredFlushes()
        }
        replies.send(on: io)
        batch.releaseBuffers()
    }

    /// Before the input is refilled: when the engine's I/O may keep running meanwhile (none of it
    /// writes from the input) and the client is still sending (`moreIsComing`), only starts that
    /// I/O; otherwise completes the batch and sends its replies, as the client may wait for them.
    func prepareToReceive(moreIsComing: Bool) {
        if moreIsComing && !batch.isIdle && batch.mayReceiveWhileRunning {
            batch.submit()
        } else {
            flushOutput()
        }
    }

    /// Answers a request that is refused before it runs, counted as invalid under `kind`.
    func refuse(_ header: RequestHeader, error: UInt32, kind: IOKind?) {
        if let kind { stats.invalidRequest(kind) }
        replies.status(header, error: error)
    }

    // MARK: - WRITE

    /// Runs a WRITE whose payload was received. `queueable`: the payload stays where it is until the
    /// batch is drained, so the engine may write from it.
    func write(_ header: RequestHeader, _ payload: UnsafeRawBufferPointer, queueable: Bool) {
        if deferredRange != nil { runDeferredRange() }
        let error = RequestCheck.validate(header, session: session, node: medium?.node)
        if error != 0 {
            refuse(header, error: error, kind: .write)
            return
        }
        if guarded { admit(isWrite: true, bytes: header.length) }
        let started = stats.start(.write)
        requestFailed = false
        if medium == nil {
            replyNoMedium(header)
        } else if queueable && queueWrite(header, payload, started: started) {
            return
        } else {
            let fua = header.commandFlags.contains(.fua)
            do {
                try node.write(payload, at: header.offset, fua: fua)
                replies.status(header, error: 0)
            } catch {
                if recover(header, error, isWrite: true, flushFirst: true, retry: { () throws(BlockError) in
                    try node.write(payload, at: header.offset, fua: fua)
                }) {
                    replies.status(header, error: 0)
                }
            }
        }
        stats.done(.write, started: started, bytes: header.length, offset: header.offset, failed: requestFailed)
    }

    /// Hands a write to the engine; false when it must be done synchronously. The payload must stay
    /// where it is until `drainPending`, which every input refill and large payload read calls first.
    /// Where the node needs aligned buffers (O_DIRECT) the payload, which follows its header in the
    /// input, is copied into an aligned one, so that aligned writes still go through the engine.
    private func queueWrite(_ header: RequestHeader, _ payload: UnsafeRawBufferPointer, started: UInt64) -> Bool {
        guard payload.count > 0, batch.isAvailable else { return false }
        var source = UnsafeMutableRawPointer(mutating: payload.baseAddress!)
        var target = node.directTarget(at: header.offset, length: payload.count, buffer: source)
        var bounced = false
        var alignment = node.features.alignment
        if let found = target, found.alignment > 1, UInt(bitPattern: source) % UInt(found.alignment) != 0 {
            // The node's own alignment is finer than the file's under it (a qcow2 image): bounce.
            target = nil
            alignment = max(alignment, found.alignment)
        }
        if target == nil, alignment > 1,
           header.offset % UInt64(alignment) == 0, payload.count % alignment == 0,
           node.directTarget(at: header.offset, length: payload.count) != nil {
            let buffer = batch.nextBuffer(payload.count)
            buffer.copyMemory(from: payload.baseAddress!, byteCount: payload.count)
            target = node.directTarget(at: header.offset, length: payload.count, buffer: buffer)
            source = buffer
            bounced = true
        }
        guard let target, let engine = batch.currentEngine() else { return false }
        let request = BatchIO.Pending(header: header, buffer: source, isRead: false, started: started)
        if !batch.queueWrite(target, request, length: payload.count, fromInput: !bounced, engine: engine) {
            drainPending()
            guard batch.queueWrite(target, request, length: payload.count, fromInput: !bounced, engine: engine) else { return false }
        }
        if bounced { batch.takeBuffer() }
        return true
    }

    // MARK: - Other commands

    /// Runs a request other than WRITE; true when it was `NBD_CMD_DISC` (valid, so the phase ends).
    func perform(_ header: RequestHeader) -> Bool {
        if header.type != NBDCommand.read.rawValue { drainPending() }
        if deferredRange != nil && !DeferredRange.mayJoin(header) { runDeferredRange() }
        let kind = RequestCheck.accountedKind(header.command)
        let error = RequestCheck.validate(header, session: session, node: medium?.node)
        if error != 0 {
            refuse(header, error: error, kind: kind)
            return false
        }
        guard let kind else {
            if header.command == .disconnect { return true }
            _ = execute(header, started: 0)
            return false
        }
        if guarded { admit(isWrite: kind == .read ? false : kind == .write ? true : nil, bytes: header.length) }
        let started = stats.start(kind)
        requestFailed = false
        let queued = execute(header, started: started)
        if !queued {
            stats.done(kind, started: started, bytes: kind == .flush ? 0 : header.length, offset: header.offset, failed: requestFailed)
        }
        return false
    }

    /// Runs a validated command other than WRITE; true when its reply comes later (handed to the batch
    /// engine, or a FLUSH answered with the batch).
    private func execute(_ header: RequestHeader, started: UInt64) -> Bool {
        guard medium != nil else {
            replyNoMedium(header)
            return false
        }
        switch header.command! {
        case .read:
            return read(header, started: started)
        case .disconnect:
            break
        case .flush:
            // Its reply cannot leave before the batch's output does, so the node is flushed once for
            // every FLUSH of the batch, right before that output is sent, covering every write before.
            deferredFlushes.append((header, started))
            return true
        case .trim:
            deferRange(header, started: started)
            return true
        case .cache:
            complete(header) { () throws(BlockError) in try node.prefetch(at: header.offset, length: header.length) }
        case .writeZeroes:
            deferRange(header, started: started)
            return true
        case .blockStatus:
            blockStatus(header)
        case .resize:
            complete(header) { () throws(BlockError) in
                try node.resize(to: header.offset)
                Log.info("\(peer): resized node '\(node.name)' of export '\(session.export.name)' to \(header.offset) bytes (NBD_CMD_RESIZE)")
            }
        case .write:
            preconditionFailure("validated away")
        }
        return false
    }

    // MARK: - Batch engine completions

    /// Runs the queued reads and writes and appends their replies in the order they complete.
    func drainPending() {
        if batch.isIdle { return }
        batch.complete { io, result in
            let count = Int(io.header.length)
            var failure: BlockError?
            if result < 0 {
                failure = BlockError.posix(io.isRead ? "read" : "write", errno: -result)
            } else if Int(result) < count {
                // A short transfer: finish the rest synchronously.
                let done = Int(result)
                do throws(BlockError) {
                    if io.isRead {
                        try node.read(into: UnsafeMutableRawBufferPointer(start: io.buffer + done, count: count - done), at: io.header.offset + UInt64(done))
                    } else {
                        try node.write(UnsafeRawBufferPointer(start: io.buffer + done, count: count - done), at: io.header.offset + UInt64(done),
                                       fua: io.header.commandFlags.contains(.fua))
                    }
                } catch {
                    failure = error
                }
            }
            if let error = failure {
                // The device's error policy decides: replied as a failure, ignored, or retried after `cont`.
                func retry() throws(BlockError) {
                    if io.isRead {
                        try node.read(into: UnsafeMutableRawBufferPointer(start: io.buffer, count: count), at: io.header.offset)
                    } else {
                        try node.write(UnsafeRawBufferPointer(start: io.buffer, count: count), at: io.header.offset,
                                       fua: io.header.commandFlags.contains(.fua))
                    }
                }
                if recover(io.header, error, isWrite: !io.isRead, flushFirst: false, retry: retry) { failure = nil }
            }
            if failure != nil {
                // Replied by `recover`.
            } else if io.isRead {
                replyRead(io.header, mapped: io.buffer, count: count)
            } else {
                replies.status(io.header, error: 0)
            }
            stats.done(io.isRead ? .read : .write, started: io.started, bytes: UInt64(count), offset: io.header.offset, failed: failure != nil)
        }
    }

    // MARK: - BLOCK_STATUS

    /// Answers a BLOCK_STATUS: one chunk per selected meta context.
    private func blockStatus(_ header: RequestHeader) {
        let limit = header.commandFlags.contains(.reqOne) ? 1 : RequestExecutor.maxExtents
        let extents: [Extent]
        do {
            extents = try coveringExtents(header.offset, header.length, limit: limit)
        } catch {
            replyFailure(header, error)
            return
        }
        for (index, context) in session.contexts.enumerated() {
            let isLast = index == session.contexts.count - 1
            if let bitmap = context.bitmap {
                appendBitmapStatus(header, bitmap, context: context, isLast: isLast, limit: limit)
                continue
            }
            let base = replies.reserve(style.chunkHeaderSize + BlockStatusReply.payloadSize(style, count: extents.count))
            var at = BlockStatusReply.writeHeader(
                style: style, flags: isLast ? .done : [], cookie: header.cookie, offset: header.offset,
                context: context.rawValue, count: extents.count, to: base)
            for extent in extents {
                at = BlockStatusReply.writeDescriptor(
                    style: style, length: extent.length, flags: RequestExecutor.flags(of: extent, in: context), to: base, at: at)
            }
            replies.commit(at)
        }
    }

    /// Most extents in one block status reply.
    static let maxExtents = 1024

    /// The status flags of `extent` in a meta context.
    static func flags(of extent: Extent, in context: MetaContext) -> UInt32 {
        if context == .allocationDepth {
            // 0: unallocated anywhere; 1: this layer; n: the (n-1)th backing layer.
            return extent.depth.map { UInt32($0 + 1) } ?? 0
        }
        var flags: AllocationFlags = []
        if extent.hole { flags.insert(.hole) }
        if extent.zero { flags.insert(.zero) }
        return flags.rawValue
    }

    /// Extents that exactly cover `[offset, offset+length)`, or at most `limit` of them for a prefix.
    func coveringExtents(_ offset: UInt64, _ length: UInt64, limit: Int) throws(BlockError) -> [Extent] {
        var extents: [Extent] = []
        var covered: UInt64 = 0
        while covered < length {
            let found = try node.blockStatus(at: offset + covered, length: length - covered)
            guard !found.isEmpty else { break }
            for var extent in found where covered < length {
                extent.length = min(extent.length, length - covered)
                guard extent.length > 0 else { continue }
                // The wire knows no host offsets: extents in the same state are one extent, even
                // when their data lies apart in the file (a qcow2 image), so REQ_ONE gets exactly one.
                if let last = extents.last, last.sameState(as: extent) {
                    extents[extents.count - 1].length += extent.length
                    extents[extents.count - 1].hostOffset = nil
                } else {
                    if extents.count == limit { return extents }
                    extents.append(extent)
                }
                covered += extent.length
            }
        }
        return extents
    }
}
