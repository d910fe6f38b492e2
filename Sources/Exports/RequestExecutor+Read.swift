import BlockCore
import NBDProtocol

/// The READ path, whole: which way a read is answered (mapped memory, several mapped pieces, holes
/// as holes, the batch engine, or a synchronous read into the output) and the reply it gets.
extension RequestExecutor {
    /// Reads at least this long consult block status so that holes are sent as holes.
    static let sparseReadThreshold = 256 * 1024
    /// Reads at least this long try `mappedRuns` when the range is not one mapped piece.
    static let mappedRunsThreshold = 64 * 1024

    /// Answers a validated READ; true when it was handed to the batch engine (accounted on completion).
    func read(_ header: RequestHeader, started: UInt64) -> Bool {
        let count = Int(header.length)
        if count == 0 && style != .simple {
            // A data chunk must carry at least one byte: an empty read is a bare success.
            replies.status(header, error: 0)
            return false
        }
        if style != .simple && count >= RequestExecutor.sparseReadThreshold && node.features.blockStatus
            && !header.commandFlags.contains(.dontFragment), sparseRead(header) {
            return false
        }
        if let mapped = node.mappedBytes(at: header.offset, length: count) {
            replyRead(header, mapped: mapped, count: count)
            return false
        }
        if count >= RequestExecutor.mappedRunsThreshold && mappedRead(header, count: count) { return false }
        if queueRead(header, count: count, started: started) { return true }
        let prefix = ReadReply.prefixSize(style)
        let base = replies.reserve(prefix + count)
        let target = UnsafeMutableRawBufferPointer(start: base + prefix, count: count)
        do {
            try node.read(into: target, at: header.offset)
        } catch {
            guard recover(header, error, isWrite: false, flushFirst: false, retry: { () throws(BlockError) in
                try node.read(into: target, at: header.offset)
            }) else { return false }
        }
        writeReadPrefix(header, count: count, at: base)
        replies.commit(prefix + count)
        return false
    }

    /// Queues a one-piece READ reply whose `count` data bytes are sent from `mapped` (not copied).
    @inline(__always)
    func replyRead(_ header: RequestHeader, mapped: UnsafeRawPointer, count: Int) {
        let prefix = ReadReply.prefixSize(style)
        writeReadPrefix(header, count: count, at: replies.reserve(prefix))
        replies.commit(prefix)
        replies.appendMapped(mapped, count: count)
    }

    /// The header of a successful one-piece READ reply: a simple reply, or an `OFFSET_DATA` chunk header and offset.
    @inline(__always)
    private func writeReadPrefix(_ header: RequestHeader, count: Int, at base: UnsafeMutableRawPointer) {
        ReadReply.writeDataPrefix(
            style: style, cookie: header.cookie, requestOffset: header.offset, dataOffset: header.offset, count: count, to: base)
    }

    /// Answers a READ from several mapped pieces (none copied); false when the range cannot be mapped.
    private func mappedRead(_ header: RequestHeader, count: Int) -> Bool {
        mappedRuns.removeAll(keepingCapacity: true)
        guard node.mappedRuns(at: header.offset, length: count, limit: 64, into: &mappedRuns) else { return false }
        if replies.lacksRoom(forMapped: mappedRuns.count) { flushOutput() }
        let prefix = ReadReply.prefixSize(style)
        writeReadPrefix(header, count: count, at: replies.reserve(prefix))
        replies.commit(prefix)
        for run in mappedRuns { replies.appendMapped(run.baseAddress!, count: run.count) }
        return true
    }

    /// A structured read that sends holes as `OFFSET_HOLE` chunks; false when the range is one data extent.
    private func sparseRead(_ header: RequestHeader) -> Bool {
        guard let extents = try? coveringExtents(header.offset, header.length, limit: 64),
              extents.reduce(0, { $0 + $1.length }) == header.length,
              extents.contains(where: \.zero) else { return false }
        let start = replies.length
        let chunkHeader = style.chunkHeaderSize
        var position = header.offset
        var lastChunk = start
        for extent in extents {
            lastChunk = replies.length
            let length = Int(extent.length)
            if extent.zero {
                replies.commit(ReadReply.writeHole(
                    style: style, cookie: header.cookie, requestOffset: header.offset, holeOffset: position, length: UInt32(length),
                    to: replies.reserve(chunkHeader + ReadReply.holePayloadSize)))
            } else {
                let mapped = node.mappedBytes(at: position, length: length)
                let prefix = chunkHeader + ReadReply.dataOffsetSize
                let base = replies.reserve(prefix + (mapped == nil ? length : 0))
                if mapped == nil {
                    do {
                        try node.read(into: UnsafeMutableRawBufferPointer(start: base + prefix, count: length), at: position)
                    } catch {
                        replies.truncate(to: start)
                        replyFailure(header, error)
                        return true
                    }
                }
                replies.commit(ReadReply.writeDataPrefix(
                    style: style, flags: [], cookie: header.cookie, requestOffset: header.offset, dataOffset: position, count: length,
                    to: base))
                if let mapped {
                    replies.appendMapped(mapped, count: length)
                } else {
                    replies.commit(length)
                }
            }
            position += extent.length
        }
        ReadReply.markDone(chunkAt: replies.address(of: lastChunk))
        return true
    }

    /// Hands a read to the engine; false when it must be done synchronously.
    private func queueRead(_ header: RequestHeader, count: Int, started: UInt64) -> Bool {
        guard count > 0, batch.isAvailable else { return false }
        let base = batch.nextBuffer(count)
        guard let target = node.directTarget(at: header.offset, length: count, buffer: base),
              let engine = batch.currentEngine() else { return false }
        let request = BatchIO.Pending(header: header, buffer: base, isRead: true, started: started)
        if !batch.queueRead(target, request, engine: engine) {
            drainPending()
            guard batch.queueRead(target, request, engine: engine) else { return false }
        }
        batch.takeBuffer()
        return true
    }
}
