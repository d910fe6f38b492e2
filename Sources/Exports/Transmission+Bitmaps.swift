import BlockCore
import NBDProtocol

extension Transmission {
    /// Appends the block status chunk of a `qemu:dirty-bitmap:` context: the request's range as
    /// clean (0) and dirty (1) extents, at most `limit` of them (1 with `NBD_CMD_FLAG_REQ_ONE`),
    /// in 32-bit or extended replies. A range past the bitmap's node size reads as clean.
    func appendBitmapStatus(_ header: RequestHeader, _ bitmap: DirtyBitmap, context: MetaContext, isLast: Bool, limit: Int) {
        var runs = bitmap.runs(from: header.offset, length: header.length, limit: limit)
        let covered = runs.reduce(0) { $0 + $1.length }
        if covered < header.length && header.offset + covered >= bitmap.size {
            if let last = runs.last, !last.dirty {
                runs[runs.count - 1].length += header.length - covered
            } else if runs.count < limit {
                runs.append((header.length - covered, false))
            }
        }
        let wide = style == .extended
        let payload = (wide ? 8 : 4) + runs.count * (wide ? 16 : 8)
        let base = reserveOutput(style.chunkHeaderSize + payload)
        var at = ReplyHeader.writeChunk(
            style: style, flags: isLast ? .done : [], type: wide ? .blockStatusExtended : .blockStatus,
            cookie: header.cookie, offset: header.offset, payloadLength: UInt64(payload), to: base)
        BigEndian.store(context.rawValue, base, at)
        at += 4
        if wide {
            BigEndian.store(UInt32(runs.count), base, at)
            at += 4
        }
        for run in runs {
            if wide {
                BigEndian.store(run.length, base, at)
                BigEndian.store(UInt64(run.dirty ? 1 : 0), base, at + 8)
                at += 16
            } else {
                BigEndian.store(UInt32(run.length), base, at)
                BigEndian.store(UInt32(run.dirty ? 1 : 0), base, at + 4)
                at += 8
            }
        }
        outputLength += at
    }
}
