#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import CBlockShims
import NBDProtocol
import Sockets

/// One client connection: the handshake under a time limit, then the transmission phase.
struct Connection {
    let fd: Int32
    let peer: String
    let exports: ExportTable
    let handshakeTimeout: Double
    let engineFactory: IOBatchEngineFactory?
    /// Called when the handshake chose an export, before the reply that ends it is sent; false when
    /// the export was removed meanwhile.
    let attached: (NBDExport) -> Bool

    /// Serves the client until it leaves; the caller closes the descriptor. True when the handshake
    /// chose an export (the client was served), false when it ended without one.
    @discardableResult
    func run() -> Bool {
        let io = SocketIO(fd: fd)
        guard let session = negotiate(io) else {
            Log.debug("\(peer): handshake ended without an export")
            return false
        }
        Log.info("\(peer): connected to export '\(session.export.name)' (\(session.style))")
        let ending = Transmission(io: io, peer: peer, session: session, engineFactory: engineFactory).run()
        switch ending {
        case .disconnect, .closed:
            Log.info("\(peer): disconnected from export '\(session.export.name)'")
        case .protocolError(let reason):
            Log.warning("\(peer): dropped: \(reason)")
        }
        return true
    }

    private func negotiate(_ plain: SocketIO) -> NegotiatedSession? {
        var io = plain
        io.deadline = MonotonicClock.seconds() + handshakeTimeout
        defer { io.disarm() }
        var machine = Negotiation(exports: exports)
        guard io.sendAll(Negotiation.greeting), let flagBytes = io.receiveBytes(4) else { return nil }
        var flagReader = ByteReader(flagBytes)
        let clientFlags = flagReader.read(UInt32.self)!
        guard machine.receiveClientFlags(clientFlags) else {
            Log.warning("\(peer): unknown client flags 0x\(String(clientFlags, radix: 16)); dropped")
            return nil
        }
        while true {
            guard let headerBytes = io.receiveBytes(OptionHeader.size) else {
                Log.debug("\(peer): handshake timed out or closed")
                return nil
            }
            guard let header = OptionHeader.decode(headerBytes) else {
                Log.warning("\(peer): bad option magic; dropped")
                return nil
            }
            let actions: [Negotiation.Action]
            if header.length > UInt32(Negotiation.maxOptionLength) {
                guard header.length <= 16 << 20, io.discard(UInt64(header.length)) else { return nil }
                actions = machine.rejectOversized(option: header.option)
            } else {
                guard let data = io.receiveBytes(Int(header.length)) else { return nil }
                actions = machine.receive(option: header.option, data: data)
            }
            // The client counts as connected once it reads the final reply, so it is attached to its
            // export first: a safe-mode removal either sees it or makes the handshake fail.
            for case .transmit(let session) in actions where !attached(session.export) {
                Log.info("\(peer): export '\(session.export.name)' was removed during the handshake")
                return nil
            }
            for action in actions {
                switch action {
                case .send(let bytes):
                    guard io.sendAll(bytes) else { return nil }
                case .transmit(let session):
                    return session
                case .close:
                    return nil
                }
            }
        }
    }
}
