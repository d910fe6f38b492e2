import BlockCore
import NBDProtocol

/// TRIM and WRITE_ZEROES requests of one batch that follow each other on the disk, run as one.
///
/// A client trimming or zeroing a long range sends it in pieces side by side (fio, `fstrim`, nbdcopy:
/// 1 MiB or so each, several in flight); a file system pays for every hole punched or range zeroed
/// (a journal transaction each: 1 MiB punches on ext4 run at a tenth of the speed of 8 MiB ones). The
/// requests wait in `deferredRange` while the next one continues them with the same command and
/// flags, and run as one node operation when another request, or the end of the batch, comes. Their
/// replies leave with the batch's output either way, so none of them is answered later than it would be.
struct DeferredRange {
    /// The command the requests share (TRIM or WRITE_ZEROES) and their flags.
    var command: NBDCommand
    var flags: CommandFlags
    var start: UInt64
    var end: UInt64
    /// The requests joined, with when each started.
    var requests: [(header: RequestHeader, started: UInt64)]

    /// The most bytes one joined operation covers.
    static let maxLength: UInt64 = 1 << 30

    /// Whether `header` is a command that may join a deferred range at all.
    static func mayJoin(_ header: RequestHeader) -> Bool {
        header.command == .trim || header.command == .writeZeroes
    }

    /// Whether `header` continues this range with the same command and flags.
    func isContinued(by header: RequestHeader) -> Bool {
        header.command == command && header.commandFlags == flags && header.offset == end
            && end - start + header.length <= DeferredRange.maxLength
    }
}

extension RequestExecutor {
    /// Holds a validated TRIM or WRITE_ZEROES until the range it belongs to ends.
    func deferRange(_ header: RequestHeader, started: UInt64) {
        if let range = deferredRange, range.isContinued(by: header) {
            deferredRange!.end += header.length
            deferredRange!.requests.append((header, started))
            return
        }
        if deferredRange != nil { runDeferredRange() }
        deferredRange = DeferredRange(
            command: header.command!, flags: header.commandFlags, start: header.offset, end: header.offset + header.length,
            requests: [(header, started)])
    }

    /// Runs the deferred range as one operation and answers its requests; when it fails, each request
    /// runs again on its own, so that each gets its own answer and the error policy sees each.
    func runDeferredRange() {
        guard let range = deferredRange else { return }
        deferredRange = nil
        let kind: IOKind = range.command == .trim ? .unmap : .write
        if range.requests.count > 1 {
            do throws(BlockError) {
                try runRange(range.command, flags: range.flags, at: range.start, length: range.end - range.start)
                for (header, started) in range.requests {
                    replies.status(header, error: 0)
                    stats.done(kind, started: started, bytes: header.length, offset: header.offset, failed: false)
                }
                return
            } catch {
                // Each request again on its own, below.
            }
        }
        for (header, started) in range.requests {
            requestFailed = false
            complete(header) { () throws(BlockError) in
                try runRange(range.command, flags: range.flags, at: header.offset, length: header.length)
            }
            stats.done(kind, started: started, bytes: header.length, offset: header.offset, failed: requestFailed)
        }
    }

    /// One TRIM or WRITE_ZEROES over `[offset, offset+length)` with the requests' flags.
    private func runRange(_ command: NBDCommand, flags: CommandFlags, at offset: UInt64, length: UInt64) throws(BlockError) {
        if command == .trim {
            try node.discard(at: offset, length: length)
            if flags.contains(.fua) { try node.flush() }
            return
        }
        var zeroFlags: ZeroFlags = []
        if !flags.contains(.noHole) { zeroFlags.insert(.mayUnmap) }
        if flags.contains(.fastZero) { zeroFlags.insert(.fastOnly) }
        if flags.contains(.fua) { zeroFlags.insert(.fua) }
        try node.writeZeroes(at: offset, length: length, flags: zeroFlags)
    }
}
