import BlockCore
import NBDProtocol

extension RequestExecutor {
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
        let base = replies.reserve(style.chunkHeaderSize + BlockStatusReply.payloadSize(style, count: runs.count))
        var at = BlockStatusReply.writeHeader(
            style: style, flags: isLast ? .done : [], cookie: header.cookie, offset: header.offset,
            context: context.rawValue, count: runs.count, to: base)
        for run in runs {
            at = BlockStatusReply.writeDescriptor(style: style, length: run.length, flags: run.dirty ? 1 : 0, to: base, at: at)
        }
        replies.commit(at)
    }
}
