#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import JSON
import QAPI
import Sockets
import Synchronization

/// The QMP monitor: listeners from `--chardev socket` + `--monitor`, one thread per client, and
/// events broadcast to every client that finished capabilities negotiation.
public final class QMPServer: Sendable {
    /// One connected monitor client.
    private final class Client: Sendable {
        let fd: Int32
        let pretty: Bool
        let negotiated = Atomic<Bool>(false)
        private let sendLock = Mutex<Void>(())

        init(fd: Int32, pretty: Bool) {
            self.fd = fd
            self.pretty = pretty
        }

        /// Sends one JSON message and its CRLF; false when the client is gone.
        func send(_ message: JSONValue) -> Bool {
            var bytes = Array((pretty ? message.prettyPrinted() : message.serialized()).utf8)
            bytes.append(contentsOf: [13, 10])
            return sendLock.withLock { _ in
                bytes.withUnsafeBytes { SocketIO(fd: fd).sendAll($0.baseAddress!, count: $0.count) }
            }
        }
    }

    private let commands: QMPCommandTable
    private let greeting: JSONValue
    private let listeners = Mutex<[Listener]>([])
    private let clients = Mutex<[Int32: Client]>([:])
    /// Creates a monitor server dispatching to `commands`.
    public init(commands: QMPCommandTable, greeting: JSONValue) {
        self.commands = commands
        self.greeting = greeting
    }

    /// Starts accepting monitor clients on `address`.
    public func listen(on address: ListenAddress, pretty: Bool) throws(OptionError) {
        let listener = try Listener(address: address)
        listeners.withLock { $0.append(listener) }
        listener.start { [self] fd, peer in
            let client = Client(fd: fd, pretty: pretty)
            clients.withLock { $0[fd] = client }
            // Commands open backing chains recursively: a monitor thread gets a full-size stack.
            spawnThread(stackSize: 8 << 20) { [self] in
                serve(client, peer: peer)
                clients.withLock { _ = $0.removeValue(forKey: fd) }
                close(fd)
            }
        }
        Log.info("QMP monitor listening on \(address)")
    }

    /// Sends an event to every negotiated client, with the current time.
    public func emit(_ name: String, data: JSONValue?) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var message: [String: JSONValue] = [
            "event": .string(name),
            "timestamp": .object(["seconds": .integer(Int64(now.tv_sec)), "microseconds": .integer(Int64(now.tv_nsec / 1000))]),
        ]
        if let data { message["data"] = data }
        let event = JSONValue.object(message)
        for client in clients.withLock({ Array($0.values) }) where client.negotiated.load(ordering: .relaxed) {
            _ = client.send(event)
        }
        Log.debug("event \(name) \(data?.serialized() ?? "")")
    }

    /// Sends a typed event.
    public func emit<E: QAPIEvent>(_ event: E) {
        emit(E.name, data: E.hasData ? event.json : nil)
    }

    /// Stops listening and disconnects every client.
    public func shutdown() {
        for listener in listeners.withLock({ $0 }) { listener.close() }
        for client in clients.withLock({ Array($0.values) }) { Glibc.shutdown(client.fd, Int32(SHUT_RDWR)) }
    }

    private func serve(_ client: Client, peer: String) {
        Log.debug("\(peer): QMP client connected")
        guard client.send(greeting) else { return }
        var session = QMPSession(commands: commands)
        var splitter = JSONStreamSplitter()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { SocketIO(fd: client.fd).receive(into: $0.baseAddress!, count: $0.count) }
            guard let count, count > 0 else { break }
            for piece in splitter.feed(buffer[0..<count]) {
                guard let reply = session.handle(piece) else { continue }
                if session.negotiated { client.negotiated.store(true, ordering: .relaxed) }
                guard client.send(reply) else { return }
            }
        }
        Log.debug("\(peer): QMP client disconnected")
    }
}
