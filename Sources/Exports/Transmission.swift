#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import Sockets
import NBDProtocol

/// The transmission phase of one connection: reads requests in batches, executes them on this thread,
/// and sends the replies of a batch with one system call.
final class Transmission {
    /// Why the phase ended.
    enum Ending {
        /// The client sent `NBD_CMD_DISC`.
        case disconnect
        /// The client closed the socket (or the server shut it for draining).
        case closed
        /// The client broke the protocol (bad magic, oversized payload); the stream cannot be resynchronised.
        case protocolError(String)
    }

    /// Input buffer capacity: a 1 MiB write and its header fit without a second buffer.
    static let inputCapacity = (1 << 20) + 4096
    /// Output flushed early once it holds this much.
    static let outputFlushThreshold = 4 << 20
    /// Reads at least this long consult block status so that holes are sent as holes.
    static let sparseReadThreshold = 256 * 1024
    /// Most extents in one block status reply.
    static let maxExtents = 1024
    /// Largest write payload read and dropped to keep the stream in sync after `EOVERFLOW`.
    static let maxDiscardedPayload: UInt64 = 64 << 20

    let io: SocketIO
    let peer: String
    let session: NegotiatedSession
    /// The device served; its medium is looked up again after every tray or medium change.
    let backend: BlockBackend
    /// The medium requests go to (nil: none inserted, or the tray is open), as of `generation`.
    var medium: BlockBackend.Medium?
    var generation: UInt64
    /// Whether requests must pass the device's `admit` (throttled or paused), as of `generation`.
    var guarded: Bool
    let stats: BlockStats
    /// Set by `replyFailure` while a request runs, for its accounting.
    var requestFailed = false
    let style: ReplyStyle
    let headerSize: Int
    let input = AlignedBuffer(capacity: Transmission.inputCapacity)
    var inputStart = 0
    var inputEnd = 0
    let output = AlignedBuffer(capacity: 256 * 1024)
    var outputLength = 0
    /// Data sent from mapped memory, spliced into the output after byte `at` of the output buffer.
    var external: [(at: Int, base: UnsafeRawPointer, count: Int)] = []
    var externalBytes = 0
    let vectors = UnsafeMutableBufferPointer<iovec>.allocate(capacity: 2 * Transmission.maxExternal + 1)
    /// Pieces of a read that lies in several mapped places (a fragmented qcow2 range); reused.
    var mappedRuns: [UnsafeRawBufferPointer] = []
    /// Reads at least this long try `mappedRuns` when the range is not one mapped piece.
    static let mappedRunsThreshold = 64 * 1024
    /// Most mapped segments held before the output is sent.
    static let maxExternal = 256

    /// A read or write handed to the batch engine, waiting for its completion.
    struct PendingIO {
        var header: RequestHeader
        var buffer: UnsafeMutableRawPointer
        var isRead: Bool
        var started: UInt64
    }
    let engineFactory: IOBatchEngineFactory?
    var engine: (any IOBatchEngine)?
    var engineTried = false
    var pending: [PendingIO] = []
    /// Buffers engine reads land in; they are sent from directly, so they live until the output is sent.
    var readBuffers: [AlignedBuffer] = []
    var readBuffersUsed = 0
    var payloadBuffer: AlignedBuffer?
    /// FLUSH requests of this batch, answered together after one flush of the node just before the
    /// output is sent (see `runDeferredFlushes`), with when each started.
    var deferredFlushes: [(header: RequestHeader, started: UInt64)] = []

    init(io: SocketIO, peer: String, session: NegotiatedSession, engineFactory: IOBatchEngineFactory?) {
        self.io = io
        self.peer = peer
        self.engineFactory = engineFactory
        self.session = session
        self.backend = session.export.backend
        (self.medium, self.generation) = backend.current()
        self.guarded = backend.needsAdmission
        self.stats = backend.stats
        self.style = session.style
        self.headerSize = session.style == .extended ? RequestHeader.extendedSize : RequestHeader.compactSize
        external.reserveCapacity(Transmission.maxExternal)
    }

    deinit { vectors.deallocate() }

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
    func switchMedium() {
        flushOutput()
        (medium, generation) = backend.current()
        guarded = backend.needsAdmission
    }

    /// Serves requests until the client disconnects or breaks the protocol.
    func run() -> Ending {
        while true {
            let available = UnsafeRawBufferPointer(start: input.bytes.baseAddress! + inputStart, count: inputEnd - inputStart)
            switch RequestHeader.decode(available, extended: style == .extended) {
            case .needMore:
                guard fill() else {
                    flushOutput()
                    return .closed
                }
            case .badMagic(let magic):
                flushOutput()
                return .protocolError("bad request magic 0x\(String(magic, radix: 16))")
            case .header(let header, let size):
                inputStart += size
                if let ending = handle(header) {
                    flushOutput()
                    return ending
                }
                if outputLength + externalBytes >= Transmission.outputFlushThreshold || external.count >= Transmission.maxExternal {
                    flushOutput()
                }
            }
        }
    }

    // MARK: - Input

    /// Sends pending replies, then blocks for more input; false when the stream ended.
    func fill() -> Bool {
        flushOutput()
        if inputStart == inputEnd {
            inputStart = 0
            inputEnd = 0
        } else if inputStart > 0 && input.capacity - inputEnd < 64 * 1024 {
            compactInput()
        }
        guard let received = io.receive(into: input.bytes.baseAddress! + inputEnd, count: input.capacity - inputEnd),
              received > 0 else { return false }
        inputEnd += received
        return true
    }

    func compactInput() {
        let pending = inputEnd - inputStart
        if pending > 0 {
            memmove(input.bytes.baseAddress!, input.bytes.baseAddress! + inputStart, pending)
        }
        inputStart = 0
        inputEnd = pending
    }

    /// The `count` payload bytes that follow the current header, consumed from the stream.
    /// Valid until the next request is read. Nil when the stream ended first.
    func takePayload(_ count: Int) -> UnsafeRawBufferPointer? {
        let pending = inputEnd - inputStart
        if pending >= count {
            defer { inputStart += count }
            return UnsafeRawBufferPointer(start: input.bytes.baseAddress! + inputStart, count: count)
        }
        flushOutput()
        if count <= input.capacity {
            if input.capacity - inputStart < count { compactInput() }
            while inputEnd - inputStart < count {
                guard let received = io.receive(into: input.bytes.baseAddress! + inputEnd, count: input.capacity - inputEnd),
                      received > 0 else { return nil }
                inputEnd += received
            }
            defer { inputStart += count }
            return UnsafeRawBufferPointer(start: input.bytes.baseAddress! + inputStart, count: count)
        }
        let buffer = payloadBuffer ?? AlignedBuffer(capacity: count)
        buffer.reserve(count)
        payloadBuffer = buffer
        memcpy(buffer.bytes.baseAddress!, input.bytes.baseAddress! + inputStart, pending)
        inputStart = inputEnd
        guard io.receiveExactly(into: buffer.bytes.baseAddress! + pending, count: count - pending) else { return nil }
        return UnsafeRawBufferPointer(start: buffer.bytes.baseAddress!, count: count)
    }

    // MARK: - Output

    func flushOutput() {
        drainPending()
        if !deferredFlushes.isEmpty { runDeferredFlushes() }
        defer { readBuffersUsed = 0 }
        guard outputLength > 0 else { return }
        if external.isEmpty {
            _ = io.sendAll(output.bytes.baseAddress!, count: outputLength)
        } else {
            let base = output.bytes.baseAddress!
            var count = 0
            var position = 0
            for segment in external {
                if segment.at > position {
                    vectors[count] = iovec(iov_base: base + position, iov_len: segment.at - position)
                    count += 1
                    position = segment.at
                }
                vectors[count] = iovec(iov_base: UnsafeMutableRawPointer(mutating: segment.base), iov_len: segment.count)
                count += 1
            }
            if outputLength > position {
                vectors[count] = iovec(iov_base: base + position, iov_len: outputLength - position)
                count += 1
            }
            if !io.sendAll(UnsafeMutableBufferPointer(rebasing: vectors[0..<count])) && errno == EFAULT {
                // The mapped file could not be paged in (an I/O error, or it was truncated behind our back).
                // Part of a reply may be out: the stream cannot be trusted any more, so end it.
                Log.error("sending mapped data failed (I/O error or truncated image); dropping the connection")
                shutdown(io.fd, Int32(SHUT_RDWR))
            }
            external.removeAll(keepingCapacity: true)
            externalBytes = 0
        }
        outputLength = 0
    }

    /// Queues `count` bytes of mapped memory to follow the output written so far.
    @inline(__always)
    func appendExternal(_ base: UnsafeRawPointer, count: Int) {
        external.append((outputLength, base, count))
        externalBytes += count
    }

    /// Forgets output (and mapped segments) queued after `length`, to replace a failed reply.
    func truncateOutput(to length: Int) {
        while let last = external.last, last.at > length {
            externalBytes -= last.count
            external.removeLast()
        }
        outputLength = length
    }

    /// Room for `count` more bytes at the end of the output; returns where they start.
    @inline(__always)
    func reserveOutput(_ count: Int) -> UnsafeMutableRawPointer {
        if output.capacity - outputLength < count {
            output.reserve(outputLength + count, preserving: outputLength)
        }
        return output.bytes.baseAddress! + outputLength
    }

    /// A reply without payload: success or an error.
    func replyStatus(_ header: RequestHeader, error: UInt32) {
        switch style {
        case .simple:
            ReplyHeader.writeSimple(error: error, cookie: header.cookie, to: reserveOutput(ReplyHeader.simpleSize))
            outputLength += ReplyHeader.simpleSize
        case .structured where header.command != .read && header.command != .blockStatus:
            ReplyHeader.writeSimple(error: error, cookie: header.cookie, to: reserveOutput(ReplyHeader.simpleSize))
            outputLength += ReplyHeader.simpleSize
        case .structured, .extended:
            if error == 0 {
                let base = reserveOutput(style.chunkHeaderSize)
                outputLength += ReplyHeader.writeChunk(
                    style: style, flags: .done, type: .none, cookie: header.cookie, offset: header.offset, payloadLength: 0, to: base)
            } else {
                let base = reserveOutput(style.chunkHeaderSize + 6)
                let size = ReplyHeader.writeChunk(
                    style: style, flags: .done, type: .error, cookie: header.cookie, offset: header.offset, payloadLength: 6, to: base)
                BigEndian.store(error, base, size)
                BigEndian.store(UInt16(0), base, size + 4)
                outputLength += size + 6
            }
        }
    }

    // MARK: - Requests

    /// Executes one request; returns an ending when the connection must stop.
    func handle(_ header: RequestHeader) -> Ending? {
        followMedium()
        let isWrite = header.type == NBDCommand.write.rawValue
        if isWrite {
            if header.length > UInt64(NBDExport.maxPayload) {
                // Over the advertised maximum: EINVAL after dropping the payload to stay in sync
                // (doc/proto.md § Block size constraints); with extended headers, or when the payload
                // is too large to be worth reading, a hard disconnect.
                guard style != .extended, header.length <= Transmission.maxDiscardedPayload else {
                    return .protocolError("write payload of \(header.length) bytes over the \(NBDExport.maxPayload)-byte maximum")
                }
                guard skipPayload(header.length) else { return .closed }
                stats.invalidRequest(.write)
                replyStatus(header, error: NBDError.invalid.rawValue)
                return nil
            }
            guard let payload = takePayload(Int(header.length)) else { return .closed }
            let error = validate(header)
            if error != 0 {
                stats.invalidRequest(.write)
                replyStatus(header, error: error)
                return nil
            }
            if guarded { admit(isWrite: true, bytes: header.length) }
            let started = stats.start(.write)
            requestFailed = false
            if medium == nil {
                replyNoMedium(header)
            } else if queueWrite(header, payload, started: started) {
                return nil
            } else {
                let fua = header.commandFlags.contains(.fua)
                do {
                    try node.write(payload, at: header.offset, fua: fua)
                    replyStatus(header, error: 0)
                } catch {
                    if recover(header, error, isWrite: true, flushFirst: true, retry: { () throws(BlockError) in
                        try node.write(payload, at: header.offset, fua: fua)
                    }) {
                        replyStatus(header, error: 0)
                    }
                }
            }
            stats.done(.write, started: started, bytes: header.length, offset: header.offset, failed: requestFailed)
            return nil
        }
        if style == .extended && header.commandFlags.contains(.payloadLength) {
            // A payload on a command that takes none: read past it, then refuse the command.
            guard header.length <= UInt64(NBDExport.maxPayload) else {
                return .protocolError("payload of \(header.length) bytes on command \(header.type)")
            }
            guard skipPayload(header.length) else { return .closed }
            replyStatus(header, error: NBDError.invalid.rawValue)
            return nil
        }
        if header.type != NBDCommand.read.rawValue { drainPending() }
        let kind = Transmission.accountedKind(header.command)
        let error = validate(header)
        if error != 0 {
            if let kind { stats.invalidRequest(kind) }
            replyStatus(header, error: error)
            return nil
        }
        guard let kind else { return execute(header) }
        if guarded { admit(isWrite: kind == .read ? false : kind == .write ? true : nil, bytes: header.length) }
        let started = stats.start(kind)
        requestFailed = false
        let queued = execute(header, started: started)
        if !queued {
            stats.done(kind, started: started, bytes: kind == .flush ? 0 : header.length, offset: header.offset, failed: requestFailed)
        }
        return nil
    }

    /// Reads and drops `count` payload bytes that follow the current header; false when the stream ended.
    func skipPayload(_ count: UInt64) -> Bool {
        let fromBuffer = min(UInt64(inputEnd - inputStart), count)
        inputStart += Int(fromBuffer)
        return io.discard(count - fromBuffer)
    }

    /// The statistics a command counts under, if any (write-zeroes count as writes, as in QEMU).
    static func accountedKind(_ command: NBDCommand?) -> IOKind? {
        switch command {
        case .read: return .read
        case .write, .writeZeroes: return .write
        case .flush: return .flush
        case .trim: return .unmap
        default: return nil
        }
    }

    /// Runs a validated command that is not accounted (disconnect, cache, block status).
    func execute(_ header: RequestHeader) -> Ending? {
        if header.command == .disconnect { return .disconnect }
        _ = execute(header, started: 0)
        return nil
    }

    /// Runs a validated command other than WRITE; true when its reply comes later (handed to the batch
    /// engine, or a FLUSH answered with the batch).
    func execute(_ header: RequestHeader, started: UInt64) -> Bool {
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
            complete(header) { () throws(BlockError) in
                try node.discard(at: header.offset, length: header.length)
                if header.commandFlags.contains(.fua) { try node.flush() }
            }
        case .cache:
            complete(header) { () throws(BlockError) in try node.prefetch(at: header.offset, length: header.length) }
        case .writeZeroes:
            var flags: ZeroFlags = []
            if !header.commandFlags.contains(.noHole) { flags.insert(.mayUnmap) }
            if header.commandFlags.contains(.fastZero) { flags.insert(.fastOnly) }
            if header.commandFlags.contains(.fua) { flags.insert(.fua) }
            complete(header) { () throws(BlockError) in try node.writeZeroes(at: header.offset, length: header.length, flags: flags) }
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

    /// Checks a request once, at the edge (doc/proto.md § Request types); returns 0 or the wire error.
    func validate(_ header: RequestHeader) -> UInt32 {
        guard let command = header.command else { return NBDError.invalid.rawValue }
        let flags = header.commandFlags
        let allowed: CommandFlags
        var writes = false
        // FUA is valid on every command once SEND_FUA is advertised (doc/proto.md § Command flags).
        switch command {
        case .read: allowed = style == .simple ? [.fua] : [.fua, .dontFragment]
        case .write: allowed = style == .extended ? [.fua, .payloadLength] : [.fua]; writes = true
        case .trim: allowed = [.fua]; writes = true
        case .writeZeroes:
            allowed = session.flags.contains(.sendFastZero) ? [.fua, .noHole, .fastZero] : [.fua, .noHole]
            writes = true
        case .flush, .cache, .disconnect: allowed = [.fua]
        case .blockStatus: allowed = [.fua, .reqOne]
        case .resize:
            // Experimental RESIZE extension: only once NBD_FLAG_SEND_RESIZE was advertised; the new size
            // is the offset, the length must be zero.
            guard session.flags.contains(.sendResize) else { return NBDError.invalid.rawValue }
            allowed = [.fua]
            writes = true
        }
        guard allowed.isSuperset(of: flags) else { return NBDError.invalid.rawValue }
        if writes && (!session.export.writable || medium?.node.readOnly == true) { return NBDError.notPermitted.rawValue }
        if command == .resize { return header.length == 0 ? 0 : NBDError.invalid.rawValue }
        // Without a medium nothing more can be checked: the request fails with EIO when it runs.
        guard medium != nil, command != .flush, command != .disconnect else { return 0 }
        let size = node.length
        let (end, overflow) = header.offset.addingReportingOverflow(header.length)
        if overflow || end > size {
            return command == .write || command == .writeZeroes ? NBDError.noSpace.rawValue : NBDError.invalid.rawValue
        }
        switch command {
        case .read:
            if header.length > UInt64(NBDExport.maxPayload) {
                return style == .simple ? NBDError.invalid.rawValue : NBDError.overflow.rawValue
            }
        case .blockStatus:
            if session.contexts.isEmpty || header.length == 0 { return NBDError.invalid.rawValue }
        default:
            break
        }
        return 0
    }

    /// Maps a driver error onto the wire's errno values.
    static func wireError(_ error: BlockError) -> UInt32 {
        switch error.errno {
        case EPERM, EROFS, EACCES: return NBDError.notPermitted.rawValue
        case ENOMEM: return NBDError.noMemory.rawValue
        case EINVAL: return NBDError.invalid.rawValue
        case ENOSPC, EDQUOT, EFBIG: return NBDError.noSpace.rawValue
        case EOVERFLOW: return NBDError.overflow.rawValue
        case ENOTSUP: return NBDError.notSupported.rawValue
        case ESHUTDOWN: return NBDError.shutdown.rawValue
        default: return NBDError.io.rawValue
        }
    }

    // MARK: - READ

    /// Answers a READ; true when it was handed to the batch engine (accounted on completion).
    func read(_ header: RequestHeader, started: UInt64) -> Bool {
        let count = Int(header.length)
        if count == 0 && style != .simple {
            // A data chunk must carry at least one byte: an empty read is a bare success.
            replyStatus(header, error: 0)
            return false
        }
        let features = node.features
        if style != .simple && count >= Transmission.sparseReadThreshold && features.blockStatus
            && !header.commandFlags.contains(.dontFragment), sparseRead(header) {
            return false
        }
        let prefix = style == .simple ? ReplyHeader.simpleSize : style.chunkHeaderSize + 8
        if let mapped = node.mappedBytes(at: header.offset, length: count) {
            let base = reserveOutput(prefix)
            writeReadHeader(header, count: count, at: base)
            outputLength += prefix
            appendExternal(mapped, count: count)
            return false
        }
        if count >= Transmission.mappedRunsThreshold && mappedRead(header, count: count, prefix: prefix) { return false }
        if queueRead(header, count: count, started: started) { return true }
        let base = reserveOutput(prefix + count)
        let target = UnsafeMutableRawBufferPointer(start: base + prefix, count: count)
        do {
            try node.read(into: target, at: header.offset)
        } catch {
            guard recover(header, error, isWrite: false, flushFirst: false, retry: { () throws(BlockError) in
                try node.read(into: target, at: header.offset)
            }) else { return false }
        }
        writeReadHeader(header, count: count, at: base)
        outputLength += prefix + count
        return false
    }

    /// The header of a successful one-piece READ reply: a simple reply, or an `OFFSET_DATA` chunk header and offset.
    @inline(__always)
    func writeReadHeader(_ header: RequestHeader, count: Int, at base: UnsafeMutableRawPointer) {
        if style == .simple {
            ReplyHeader.writeSimple(error: 0, cookie: header.cookie, to: base)
        } else {
            let size = ReplyHeader.writeChunk(
                style: style, flags: .done, type: .offsetData, cookie: header.cookie, offset: header.offset,
                payloadLength: UInt64(8 + count), to: base)
            BigEndian.store(header.offset, base, size)
        }
    }

    // MARK: - BLOCK_STATUS

    func blockStatus(_ header: RequestHeader) {
        let limit = header.commandFlags.contains(.reqOne) ? 1 : Transmission.maxExtents
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
            let wide = style == .extended
            let payload = (wide ? 8 : 4) + extents.count * (wide ? 16 : 8)
            let base = reserveOutput(style.chunkHeaderSize + payload)
            var at = ReplyHeader.writeChunk(
                style: style, flags: isLast ? .done : [], type: wide ? .blockStatusExtended : .blockStatus,
                cookie: header.cookie, offset: header.offset, payloadLength: UInt64(payload), to: base)
            BigEndian.store(context.rawValue, base, at)
            at += 4
            if wide {
                BigEndian.store(UInt32(extents.count), base, at)
                at += 4
            }
            for extent in extents {
                let flags = Transmission.flags(of: extent, in: context)
                if wide {
                    BigEndian.store(extent.length, base, at)
                    BigEndian.store(UInt64(flags), base, at + 8)
                    at += 16
                } else {
                    BigEndian.store(UInt32(extent.length), base, at)
                    BigEndian.store(flags, base, at + 4)
                    at += 8
                }
            }
            outputLength += at
        }
    }

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
}
