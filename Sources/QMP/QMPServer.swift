#if canImport(Glibc)
import Glibc
#endif
import JSON
import QAPI
import Sockets
import Synchronization
import LogOptionsClock

/// The QMP monitor: listeners from `--chardev socket` + `--monitor`, a reader and a writer thread per
/// client, and events queued to every client that finished capabilities negotiation.
public final class QMPServer: Sendable {
    /// Most monitor clients connected at once; more are logged and closed.
    public static let defaultMaxClients = 64
    /// Seconds `shutdown()` gives clients to read what is queued for them (the `SHUTDOWN` event).
    static let shutdownGraceSeconds: UInt64 = 1

    private let commands: QMPCommandTable
    private let greeting: JSONValue
    private let maxClients: Int
    private let outboxLimits: (eventLimit: Int, replyBacklog: Int)
    private let listeners = Mutex<[Listener]>([])
    private let clients = Mutex<[ObjectIdentifier: MonitorConnection]>([:])

    /// Creates a monitor server dispatching to `commands`, serving up to `maxClients` clients at once,
    /// each allowed `eventLimit` bytes of unread events before it is disconnected.
    public init(commands: QMPCommandTable, greeting: JSONValue, maxClients: Int = QMPServer.defaultMaxClients,
                eventLimit: Int = 1 << 20, replyBacklog: Int = 256 << 10) {
        self.commands = commands
        self.greeting = greeting
        self.maxClients = maxClients
        self.outboxLimits = (eventLimit, replyBacklog)
    }

    /// Starts accepting monitor clients on `address`.
    public func listen(on address: ListenAddress, pretty: Bool) throws(OptionError) {
        let listener = try Listener(address: address)
        listeners.withLock { $0.append(listener) }
        listener.start { [self] fd, peer in admit(fd, peer: peer, pretty: pretty) }
        Log.info("QMP monitor listening on \(address)")
    }

    private func admit(_ fd: Int32, peer: Peer, pretty: Bool) {
        let outbox = MonitorOutbox(eventLimit: outboxLimits.eventLimit, replyBacklog: outboxLimits.replyBacklog)
        let client = MonitorConnection(fd: fd, peer: peer, pretty: pretty, outbox: outbox)
        let key = ObjectIdentifier(client)
        let admitted = clients.withLock { live -> Bool in
            guard live.count < maxClients else { return false }
            live[key] = client
            return true
        }
        guard admitted else {
            Log.warning("\(peer.description): QMP client refused: \(maxClients) monitor clients are connected")
            close(fd)
            return
        }
        // Commands open backing chains recursively: the thread that runs them gets a full-size stack.
        spawnThread(stackSize: 8 << 20) { [self] in
            client.run(commands: commands, greeting: greeting)
            clients.withLock { _ = $0.removeValue(forKey: key) }
        }
    }

    /// Queues an event, with the current time, for every client that finished capabilities
    /// negotiation. Never blocks: a client whose unread events pass the limit is disconnected instead.
    public func emit(_ name: String, data: JSONValue?) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var message: [String: JSONValue] = [
            "event": .string(name),
            "timestamp": .object(["seconds": .integer(Int64(now.tv_sec)), "microseconds": .integer(Int64(now.tv_nsec / 1000))]),
        ]
        if let data { message["data"] = data }
        let event = JSONValue.object(message)
        var encoded: [Bool: [UInt8]] = [:]
        for client in clients.withLock({ Array($0.values) }) {
            let bytes = encoded[client.pretty] ?? client.encode(event)
            encoded[client.pretty] = bytes
            if client.outbox.post(event: bytes) == .overflowed {
                Log.warning("\(client.peer.description): QMP client disconnected: it left more than \(client.outbox.eventLimit) bytes of events unread")
                client.disconnect(Int32(SHUT_RDWR))
            }
        }
        Log.debug("event \(name) \(data?.serialized() ?? "")")
    }

    /// Queues a typed event.
    public func emit<E: QAPIEvent>(_ event: E) {
        emit(E.name, data: E.hasData ? event.json : nil)
    }

    /// How many monitor clients are connected.
    public var clientCount: Int { clients.withLock { $0.count } }

    /// Stops listening, stops reading commands, gives clients up to a second to read what is queued
    /// for them (the `SHUTDOWN` event), and disconnects them all.
    public func shutdown() {
        for listener in listeners.withLock({ $0 }) { listener.close() }
        let connected = clients.withLock { Array($0.values) }
        for client in connected { client.disconnect(Int32(SHUT_RD)) }
        let deadline = MonotonicClock.nanoseconds() + QMPServer.shutdownGraceSeconds * 1_000_000_000
        for client in connected { client.outbox.waitUntilWritten(deadline: deadline) }
        for client in connected { client.disconnect(Int32(SHUT_RDWR)) }
    }
}
