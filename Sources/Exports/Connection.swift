#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import CBlockShims
import NBDProtocol
import Sockets
import LogOptionsClock

/// One client connection: the handshake under a time limit, then the transmission phase.
struct Connection {
    let fd: Int32
    let peer: String
    let exports: ExportTable
    let handshakeTimeout: Double
    let engineFactory: IOBatchEngineFactory?
    /// TLS the client must start before anything else (nil: plain connections).
    let tls: TLSSettings?
    /// Called once TLS is established, with what it agreed on.
    let secured: (TLSDescription) -> Void
    /// Called when the handshake chose an export, before the reply that ends it is sent; false when
    /// the export was removed meanwhile.
    let attached: (NBDExport) -> Bool
    /// Called when the handshake ends without an export, with why.
    var failed: (HandshakeFailure) -> Void = { _ in }

    /// Serves the client until it leaves; the caller closes the descriptor. True when the handshake
    /// chose an export (the client was served), false when it ended without one.
    @discardableResult
    func run() -> Bool {
        var io = SocketIO(fd: fd)
        var failure = HandshakeFailure.closed
        guard let session = negotiate(&io, failure: &failure) else {
            failed(failure)
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

    /// Runs the TLS handshake after STARTTLS was acknowledged, checks the peer and asks the
    /// authorization; hands the keys to the kernel when it can take them. False drops the client.
    private func startTLS(_ io: inout SocketIO, failure: inout HandshakeFailure) -> Bool {
        failure = .tls
        guard let tls, io.arm() else { return false }
        let channel: TLSChannel
        do throws(TLSError) {
            channel = try TLSChannel(fd: fd, credentials: tls.credentials)
            try channel.handshake()
        } catch {
            Log.warning("\(peer): \(error.message); dropped")
            return false
        }
        let identity: String?
        do throws(TLSError) {
            identity = try channel.peerIdentity()
        } catch {
            Log.warning("\(peer): TLS client refused: \(error.message)")
            return false
        }
        let shown = identity.map { "'\($0)'" } ?? "(no identity)"
        guard tls.authorize(identity) else {
            failure = .unauthorized
            Log.warning("\(peer): TLS client \(shown) is not authorized by '\(tls.authorizationID ?? "")'; dropped")
            return false
        }
        let negotiated = channel.negotiated
        switch channel.offloadToKernel() {
        case .enabled:
            secured(TLSDescription(negotiated: negotiated, identity: identity, kernel: true))
            Log.info("\(peer): TLS \(negotiated) (kernel TLS), client \(shown)")
            return true
        case .failed:
            Log.warning("\(peer): handing the TLS keys to the kernel failed; dropped")
            return false
        case .unavailable:
            secured(TLSDescription(negotiated: negotiated, identity: identity, kernel: false))
            Log.info("\(peer): TLS \(negotiated) (userspace TLS), client \(shown)")
            io.tls = channel
            return true
        }
    }

    private func negotiate(_ io: inout SocketIO, failure: inout HandshakeFailure) -> NegotiatedSession? {
        let deadline = MonotonicClock.seconds() + handshakeTimeout
        io.deadline = deadline
        defer { if failure == .closed && MonotonicClock.seconds() >= deadline { failure = .timeout } }
        defer {
            io.disarm()
            io.deadline = nil
        }
        var machine = Negotiation(exports: exports, tlsRequired: tls != nil)
        guard io.sendAll(Negotiation.greeting), let flagBytes = io.receiveBytes(4) else { return nil }
        var flagReader = ByteReader(flagBytes)
        let clientFlags = flagReader.read(UInt32.self)!
        guard machine.receiveClientFlags(clientFlags) else {
            failure = .protocol
            Log.warning("\(peer): unknown client flags 0x\(String(clientFlags, radix: 16)); dropped")
            return nil
        }
        while true {
            guard let headerBytes = io.receiveBytes(OptionHeader.size) else {
                Log.debug("\(peer): handshake timed out or closed")
                return nil
            }
            guard let header = OptionHeader.decode(headerBytes) else {
                failure = .protocol
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
                failure = .exportRemoved
                Log.info("\(peer): export '\(session.export.name)' was removed during the handshake")
                return nil
            }
            if actions.contains(where: { if case .close = $0 { true } else { false } }) { failure = .aborted }
            for action in actions {
                switch action {
                case .send(let bytes):
                    guard io.sendAll(bytes) else { return nil }
                case .transmit(let session):
                    return session
                case .close:
                    failure = .aborted
                    return nil
                case .startTLS:
                    guard startTLS(&io, failure: &failure) else { return nil }
                    failure = .closed
                }
            }
        }
    }
}
