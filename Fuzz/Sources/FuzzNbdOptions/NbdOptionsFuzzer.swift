@testable import Exports
import FuzzSupport

/// nbd-options: the input is what a client sends from the start of a connection (client flags,
/// options, then requests if it got as far as NBD_OPT_GO). The real connection code runs on one
/// end of a socket pair: greeting, option decoding, the negotiation state machine, transmission.
@_cdecl("LLVMFuzzerTestOneInput")
public func nbdOptionsFuzzInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    FuzzExports.reset()
    let input = fuzzBytes(data, size)
    SocketPeer.exchange(input) { fd in
        let connection = Connection(
            fd: fd, peer: "fuzz", exports: FuzzExports.table, handshakeTimeout: 30, engineFactory: nil, tls: nil, secured: { _ in }, attached: { _ in true })
        connection.run()
    }
    return 0
}

@main
enum NbdOptionsFuzzer {
    static func main() { runFuzzer() }
}
