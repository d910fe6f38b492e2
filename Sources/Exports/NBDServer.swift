#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import Sockets
import Synchronization
import LogOptionsClock

/// Limits that keep idle or hostile clients from exhausting the server.
public struct ServerLimits: Sendable {
    /// Most simultaneous connections; when all are taken, `ConnectionAdmission` decides.
    public var maxConnections = 100
    /// Connections per peer never closed to make room for another peer.
    public var protectedPerPeer = 16
    /// Newcomers accepted while every slot is taken, waiting (without a greeting) for a slot, as
    /// QEMU's clients wait; past them a newcomer is closed ("connection limit reached").
    public var maxWaiting = 16
    /// Seconds a client has to finish the handshake.
    public var handshakeTimeout = 10.0

    /// The defaults: 100 connections (16 per peer kept), 10 seconds.
    public init() {}
}

/// The NBD server: listeners, the export table and the live connections.
public final class NBDServer: Sendable {
    /// The exports clients can reach.
    public let exports = ExportTable()
    private let limits: Mutex<ServerLimits>
    private let listeners = Mutex<[Listener]>([])
    /// One live connection.
    private struct Live {
        var peer: Peer
        /// The id of the export it uses (nil during the handshake).
        var exportID: String?
        var sequence: UInt64
        /// Closed to make room for another peer; no longer counted.
        var evicted = false
        /// The TLS session, once the handshake is done.
        var tls: TLSDescription?
    }

    /// One connection as `clients` lists it.
    public struct ClientInfo: Sendable {
        /// The peer's address.
        public var peer: String
        /// The export's id (nil during the handshake).
        public var exportID: String?
        /// The TLS session (nil: plain, or still negotiating).
        public var tls: TLSDescription?
    }

    /// The connections, oldest first.
    public var clients: [ClientInfo] {
        connections.withLock { state in
            state.live.values.filter { !$0.evicted }.sorted { $0.sequence < $1.sequence }
                .map { ClientInfo(peer: $0.peer.description, exportID: $0.exportID, tls: $0.tls) }
        }
    }

    /// Live connections by descriptor (an entry goes before its descriptor is closed), and the
    /// accepted clients waiting for a slot, oldest first.
    private let connections = Mutex<(live: [Int32: Live], admitted: UInt64, waiting: [(fd: Int32, peer: Peer)])>(([:], 0, []))
    /// Called once when the last client that finished its handshake leaves (qemu-nbd without `-t`).
    private let whenIdle = Mutex<(@Sendable () -> Void)?>(nil)
    private let draining = Atomic<Bool>(false)
    private let engineFactory: IOBatchEngineFactory?
    private let tlsSettings = Mutex<TLSSettings?>(nil)

    /// Creates a server that is not listening yet; `engineFactory` makes each connection's batch I/O engine.
    public init(limits: ServerLimits = ServerLimits(), engineFactory: IOBatchEngineFactory? = nil) {
        self.limits = Mutex(limits)
        self.engineFactory = engineFactory
    }

    /// Requires TLS (or, with nil, plain connections) of clients that connect from now on.
    public func setTLS(_ settings: TLSSettings?) {
        tlsSettings.withLock { $0 = settings }
    }

    /// The TLS clients that connect from now on must start.
    public var tls: TLSSettings? { tlsSettings.withLock { $0 } }

    /// Changes the connection limit for clients that connect from now on.
    public func setMaxConnections(_ limit: Int) {
        limits.withLock { $0.maxConnections = limit }
    }

    /// Runs `action` once, when the last client that finished a handshake disconnects; from then on
    /// no client is admitted (qemu-nbd's exit after the last client, without `--persistent`).
    public func onLastClientGone(_ action: @escaping @Sendable () -> Void) {
        whenIdle.withLock { $0 = action }
    }

    /// Starts listening on `address`; returns the bound TCP port, if any.
    @discardableResult
    public func listen(on address: ListenAddress) throws(OptionError) -> Int? {
        let listener = try Listener(address: address)
        listeners.withLock { $0.append(listener) }
        // Every newcomer is accepted and judged (a peer that holds every slot must not keep another
        // out by filling the listen backlog); past `maxWaiting` waiting clients a newcomer is closed.
        listener.start { [self] fd, peer in accept(fd, peer: peer) }
        Log.info("NBD server listening on \(address)")
        return listener.boundPort
    }

    /// Stops listening on `address` (connections already accepted go on).
    public func stopListening(on address: ListenAddress) {
        let removed = listeners.withLock { list -> Listener? in
            guard let index = list.firstIndex(where: { $0.address == address }) else { return nil }
            return list.remove(at: index)
        }
        removed?.close()
        if removed != nil { Log.info("NBD server no longer listening on \(address)") }
    }

    /// The addresses listened on.
    public var addresses: [ListenAddress] { listeners.withLock { $0.map(\.address) } }

    /// Removes an export; its clients are disconnected after the requests they already sent.
    @discardableResult
    public func removeExport(id: String) -> NBDExport? {
        guard let export = exports.remove(id: id) else { return nil }
        let users = connections.withLock { state in
            let users = state.live.filter { $0.value.exportID == id }.map(\.key)
            for fd in users { Glibc.shutdown(fd, Int32(SHUT_RD)) }
            return users
        }
        Log.info("export '\(export.name)' removed (\(users.count) client(s) disconnected)")
        return export
    }

    /// What a safe-mode removal did.
    public enum SafeRemoval: Sendable, Equatable {
        /// The export is gone.
        case removed
        /// A client uses the export; nothing changed.
        case inUse
        /// No export has that id.
        case notFound
    }

    /// Removes an export only while no client uses it. The check and the removal happen under the
    /// lock clients attach under, so a client that attaches at the same time is either counted here
    /// or finds the export gone and fails its handshake.
    public func removeExportIfUnused(id: String) -> SafeRemoval {
        let outcome = connections.withLock { state -> SafeRemoval in
            guard exports.export(id: id) != nil else { return .notFound }
            guard !state.live.values.contains(where: { $0.exportID == id }) else { return .inUse }
            return exports.remove(id: id) == nil ? .notFound : .removed
        }
        if outcome == .removed { Log.info("export '\(id)' removed (no client connected)") }
        return outcome
    }

    /// How many clients use the export with that id.
    public func clientCount(exportID: String) -> Int {
        connections.withLock { state in state.live.values.filter { $0.exportID == exportID }.count }
    }

    /// Handshakes that ended without an export, by reason.
    public let handshakeFailures = HandshakeFailureCounters()

    /// How many clients are connected now.
    public var connectionCount: Int { connections.withLock { $0.live.count } }

    private func accept(_ fd: Int32, peer: Peer) {
        let current = limits.withLock { $0 }
        let admission = ConnectionAdmission(maxConnections: current.maxConnections, protectedPerPeer: current.protectedPerPeer)
        var full = false
        let (decision, closed) = connections.withLock { state -> (ConnectionAdmission.Decision<Int32>?, Peer?) in
            guard !draining.load(ordering: .relaxed) else { return (nil, nil) }
            let counted = state.live.filter { !$0.value.evicted }.mapValues {
                ConnectionAdmission.Slot(peer: $0.peer.identity, attached: $0.exportID != nil, sequence: $0.sequence)
            }
            var decision = admission.decide(peer: peer.identity, live: counted)
            // A free slot goes to those already waiting first; closing a connection of the peer that
            // holds the most (the fair-admission rule) does not wait.
            if !state.waiting.isEmpty, case .admit = decision { decision = .refuse }
            var closed: Peer?
            switch decision {
            case .refuse:
                if state.waiting.count >= current.maxWaiting {
                    full = true
                } else {
                    state.waiting.append((fd, peer))
                }
                return (decision, nil)
            case .admitClosing(let victim):
                // Under the lock: the victim's descriptor stays open until its entry is gone.
                state.live[victim]?.evicted = true
                closed = state.live[victim]?.peer
                Glibc.shutdown(victim, Int32(SHUT_RDWR))
            case .admit:
                break
            }
            state.admitted += 1
            state.live[fd] = Live(peer: peer, exportID: nil, sequence: state.admitted)
            return (decision, closed)
        }
        guard let decision else {
            Log.warning("\(peer.description): refused: shutting down")
            close(fd)
            return
        }
        guard decision != .refuse else {
            if full {
                handshakeFailures.count(.refused)
                Log.warning("\(peer.description): refused: connection limit \(current.maxConnections) reached and \(current.maxWaiting) clients wait")
                close(fd)
            } else {
                Log.info("\(peer.description): waits for a slot: all \(current.maxConnections) connections are taken")
            }
            return
        }
        if let closed {
            Log.warning("\(closed.description): closed to admit \(peer.description): all \(current.maxConnections) connections were taken and '\(closed.identity)' held the most")
        }
        serve(fd, peer: peer, handshakeTimeout: current.handshakeTimeout)
    }

    /// Runs an admitted connection on a thread of its own; when it ends, a waiting client takes its slot.
    private func serve(_ fd: Int32, peer: Peer, handshakeTimeout: Double) {
        let exports = self.exports
        let engineFactory = self.engineFactory
        let tls = self.tls
        spawnThread { [self] in
            let connection = Connection(
                fd: fd, peer: peer.description, exports: exports, handshakeTimeout: handshakeTimeout, engineFactory: engineFactory, tls: tls,
                secured: { [self] description in connections.withLock { $0.live[fd]?.tls = description } },
                attached: { [self] export in
                    // An export removed during the handshake must not be served.
                    connections.withLock { $0.live[fd]?.exportID = export.id }
                    return self.exports.export(named: export.name) === export
                }, failed: { [self] reason in handshakeFailures.count(reason) })
            let negotiated = connection.run()
            let maxConnections = limits.withLock { $0.maxConnections }
            let (next, idle) = connections.withLock { state -> ((fd: Int32, peer: Peer)?, Bool) in
                _ = state.live.removeValue(forKey: fd)
                if negotiated && state.live.isEmpty && whenIdle.withLock({ $0 != nil }) {
                    draining.store(true, ordering: .relaxed)
                    return (nil, true)
                }
                guard !draining.load(ordering: .relaxed), !state.waiting.isEmpty,
                      state.live.values.filter({ !$0.evicted }).count < maxConnections else { return (nil, false) }
                let next = state.waiting.removeFirst()
                state.admitted += 1
                state.live[next.fd] = Live(peer: next.peer, exportID: nil, sequence: state.admitted)
                return (next, false)
            }
            close(fd)
            if idle, let action = whenIdle.withLock({ $0 }) { action() }
            if let next { serve(next.fd, peer: next.peer, handshakeTimeout: handshakeTimeout) }
            for listener in listeners.withLock({ $0 }) { listener.resume() }
        }
    }

    /// Stops accepting, lets every connection finish the requests it has read, and waits up to `timeout` seconds.
    public func shutdown(timeout: Double = 10) {
        draining.store(true, ordering: .relaxed)
        for listener in listeners.withLock({ $0 }) { listener.close() }
        let waiting = connections.withLock { state in
            defer { state.waiting.removeAll() }
            return state.waiting
        }
        for client in waiting { close(client.fd) }
        // Half-close: threads see end of input after the requests already received, reply, and exit.
        connections.withLock { state in for fd in state.live.keys { Glibc.shutdown(fd, Int32(SHUT_RD)) } }
        let deadline = MonotonicClock.seconds() + timeout
        while connectionCount > 0 && MonotonicClock.seconds() < deadline { usleep(10_000) }
        if connectionCount > 0 {
            Log.warning("\(connectionCount) connection(s) still busy at shutdown")
            connections.withLock { state in for fd in state.live.keys { Glibc.shutdown(fd, Int32(SHUT_RDWR)) } }
        }
    }
}
