#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import NBDProtocol

/// The batch engine path of the transmission phase (`aio=native`): reads and writes of a batch are
/// handed to the connection's engine and their replies are written as they complete.
extension Transmission {
    // MARK: - Batch engine (aio=native)

    /// The connection's engine, created on first use; nil when there is none.
    func batchEngine() -> (any IOBatchEngine)? {
        if !engineTried {
            engineTried = true
            engine = engineFactory?()
        }
        return engine
    }

    /// Hands a read to the engine; false when it must be done synchronously.
    func queueRead(_ header: RequestHeader, count: Int, started: UInt64) -> Bool {
        guard count > 0, engineFactory != nil else { return false }
        let base = ioBuffer(count)
        guard let target = node.directTarget(at: header.offset, length: count, buffer: base),
              let engine = batchEngine() else { return false }
        if !engine.queueRead(target, into: base, length: count, token: pending.count) {
            drainPending()
            guard engine.queueRead(target, into: base, length: count, token: pending.count) else { return false }
        }
        readBuffersUsed += 1
        pending.append(PendingIO(header: header, buffer: base, isRead: true, started: started))
        return true
    }

    /// Hands a write to the engine; false when it must be done synchronously. The payload must stay
    /// where it is until `drainPending`, which every input refill and large payload read calls first.
    /// Where the node needs aligned buffers (O_DIRECT) the payload, which follows its header in the
    /// input, is copied into an aligned one, so that aligned writes still go through the engine.
    func queueWrite(_ header: RequestHeader, _ payload: UnsafeRawBufferPointer, started: UInt64) -> Bool {
        guard payload.count > 0, engineFactory != nil, UnsafeRawPointer(payloadBuffer?.bytes.baseAddress) != payload.baseAddress
        else { return false }
        var source = UnsafeMutableRawPointer(mutating: payload.baseAddress!)
        var target = node.directTarget(at: header.offset, length: payload.count, buffer: source)
        var bounced = false
        let alignment = node.features.alignment
        if target == nil, alignment > 1,
           header.offset % UInt64(alignment) == 0, payload.count % alignment == 0,
           node.directTarget(at: header.offset, length: payload.count) != nil {
            let buffer = ioBuffer(payload.count)
            buffer.copyMemory(from: payload.baseAddress!, byteCount: payload.count)
            target = node.directTarget(at: header.offset, length: payload.count, buffer: buffer)
            source = buffer
            bounced = true
        }
        guard let target, let engine = batchEngine() else { return false }
        let fua = header.commandFlags.contains(.fua)
        if !engine.queueWrite(target, from: source, length: payload.count, fua: fua, token: pending.count) {
            drainPending()
            guard engine.queueWrite(target, from: source, length: payload.count, fua: fua, token: pending.count) else { return false }
        }
        if bounced { readBuffersUsed += 1 }
        pending.append(PendingIO(header: header, buffer: source, isRead: false, started: started))
        return true
    }

    /// The next free buffer of the connection's aligned pool, large enough for `count` bytes; it is
    /// taken by raising `readBuffersUsed` (the pool is given back whole when the output is flushed).
    func ioBuffer(_ count: Int) -> UnsafeMutableRawPointer {
        if readBuffersUsed == readBuffers.count { readBuffers.append(AlignedBuffer(capacity: count)) }
        let buffer = readBuffers[readBuffersUsed]
        buffer.reserve(count)
        return buffer.bytes.baseAddress!
    }

    /// Runs the queued reads and writes and appends their replies in the order they complete.
    func drainPending() {
        guard !pending.isEmpty, let engine else { return }
        engine.complete { token, result in
            let io = pending[token]
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
                let prefix = style == .simple ? ReplyHeader.simpleSize : style.chunkHeaderSize + 8
                writeReadHeader(io.header, count: count, at: reserveOutput(prefix))
                outputLength += prefix
                appendExternal(io.buffer, count: count)
            } else {
                replyStatus(io.header, error: 0)
            }
            stats.done(io.isRead ? .read : .write, started: io.started, bytes: UInt64(count), offset: io.header.offset, failed: failure != nil)
        }
        pending.removeAll(keepingCapacity: true)
    }

    /// A structured read that sends holes as `OFFSET_HOLE` chunks; false when the range is one data extent.
    /// Answers a READ from several mapped pieces (none copied); false when the range cannot be mapped.
    func mappedRead(_ header: RequestHeader, count: Int, prefix: Int) -> Bool {
        mappedRuns.removeAll(keepingCapacity: true)
        guard node.mappedRuns(at: header.offset, length: count, limit: 64, into: &mappedRuns) else { return false }
        if external.count + mappedRuns.count > Transmission.maxExternal { flushOutput() }
        let base = reserveOutput(prefix)
        writeReadHeader(header, count: count, at: base)
        outputLength += prefix
        for run in mappedRuns { appendExternal(run.baseAddress!, count: run.count) }
        return true
    }

    func sparseRead(_ header: RequestHeader) -> Bool {
        guard let extents = try? coveringExtents(header.offset, header.length, limit: 64),
              extents.reduce(0, { $0 + $1.length }) == header.length,
              extents.contains(where: \.zero) else { return false }
        let start = outputLength
        let chunkHeader = style.chunkHeaderSize
        var position = header.offset
        var lastChunk = start
        for extent in extents {
            lastChunk = outputLength
            let length = Int(extent.length)
            if extent.zero {
                let base = reserveOutput(chunkHeader + 12)
                let size = ReplyHeader.writeChunk(
                    style: style, flags: [], type: .offsetHole, cookie: header.cookie, offset: header.offset, payloadLength: 12, to: base)
                BigEndian.store(position, base, size)
                BigEndian.store(UInt32(length), base, size + 8)
                outputLength += size + 12
            } else {
                let mapped = node.mappedBytes(at: position, length: length)
                let base = reserveOutput(chunkHeader + 8 + (mapped == nil ? length : 0))
                if mapped == nil {
                    do {
                        try node.read(into: UnsafeMutableRawBufferPointer(start: base + chunkHeader + 8, count: length), at: position)
                    } catch {
                        truncateOutput(to: start)
                        replyFailure(header, error)
                        return true
                    }
                }
                let size = ReplyHeader.writeChunk(
                    style: style, flags: [], type: .offsetData, cookie: header.cookie, offset: header.offset,
                    payloadLength: UInt64(8 + length), to: base)
                BigEndian.store(position, base, size)
                outputLength += size + 8
                if let mapped {
                    appendExternal(mapped, count: length)
                } else {
                    outputLength += length
                }
            }
            position += extent.length
        }
        BigEndian.store(ReplyFlags.done.rawValue, output.bytes.baseAddress! + lastChunk, 4)
        return true
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
