import BlockCore
@testable import Exports
import FuzzSupport
import NBDProtocol
import Sockets

/// nbd-requests: the first byte picks the negotiated state (reply style, export, meta contexts);
/// the rest is the request stream a client sends in the transmission phase, which the real
/// transmission loop reads from one end of a socket pair.
@_cdecl("LLVMFuzzerTestOneInput")
public func nbdRequestsFuzzInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    FuzzExports.reset()
    var input = FuzzInput(fuzzBytes(data, size))
    let setup = input.byte()
    let style: ReplyStyle = [.simple, .structured, .extended, .structured][Int(setup & 3)]
    let exports = FuzzExports.table.all
    let export = exports[Int(setup >> 2 & 3) % exports.count]
    guard let medium = export.medium else { return 0 }
    var contexts: [MetaContext] = []
    if style != .simple {
        if setup & 0x10 != 0 { contexts.append(.baseAllocation) }
        if setup & 0x20 != 0 { contexts.append(.allocationDepth) }
    }
    let session = NegotiatedSession(
        export: export, style: style, contexts: contexts, flags: export.transmissionFlags(style: style, medium: medium))
    SocketPeer.exchange(input.rest()) { fd in
        _ = Transmission(io: SocketIO(fd: fd), peer: "fuzz", session: session, engineFactory: nil).run()
    }
    return 0
}

@main
enum NbdRequestsFuzzer {
    static func main() { runFuzzer() }
}
