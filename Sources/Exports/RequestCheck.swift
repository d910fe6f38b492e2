#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import NBDProtocol

/// The checks a request passes once, at the edge, before anything runs (doc/proto.md § Request
/// types), and the mapping of driver errors onto the wire's errno values.
enum RequestCheck {
    /// 0 when `header` may run on `node` (nil: no medium) in `session`, else the wire error to answer.
    static func validate(_ header: RequestHeader, session: NegotiatedSession, node: BlockNode?) -> UInt32 {
        guard let command = header.command else { return NBDError.invalid.rawValue }
        let style = session.style
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
        if writes && (!session.export.writable || node?.readOnly == true) { return NBDError.notPermitted.rawValue }
        if command == .resize { return header.length == 0 ? 0 : NBDError.invalid.rawValue }
        // Without a medium nothing more can be checked: the request fails with EIO when it runs.
        guard let node, command != .flush, command != .disconnect else { return 0 }
        let (end, overflow) = header.offset.addingReportingOverflow(header.length)
        if overflow || end > node.length {
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
}
