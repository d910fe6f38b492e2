#if canImport(Glibc)
import Glibc
#endif
import JSON
import QAPI
import Sockets
import Synchronization
import LogOptionsClock

/// One connected monitor client: a reader thread that runs its session (commands in, replies
/// posted) and a writer thread that sends whatever its outbox holds. Nothing else ever writes to
/// the socket, so events and replies keep the order in which they were posted.
final class MonitorConnection: Sendable {
    /// Seconds a client that stopped sending has to read its last replies before it is dropped.
    static let lingerSeconds: UInt64 = 10

    let fd: Int32
    let peer: Peer
    let pretty: Bool
    /// Replies and events to send; it takes events once capabilities negotiation is complete.
    let outbox: MonitorOutbox
    /// True once the descriptor is closed: guards `disconnect` against a reused descriptor number.
    private let released = Mutex<Bool>(false)

    init(fd: Int32, peer: Peer, pretty: Bool, outbox: MonitorOutbox) {
        self.fd = fd
        self.peer = peer
        self.pretty = pretty
        self.outbox = outbox
    }

    /// The message as this client wants it on the wire: JSON text, pretty or compact, and CRLF.
    func encode(_ message: JSONValue) -> [UInt8] {
        var bytes = Array((pretty ? message.prettyPrinted() : message.serialized()).utf8)
        bytes.append(contentsOf: [13, 10])
        return bytes
    }

    /// Shuts the socket down (`SHUT_RD` stops the reader, `SHUT_RDWR` the writer too); never blocks.
    func disconnect(_ how: Int32) {
        released.withLock { closed in
            if !closed { _ = Glibc.shutdown(fd, how) }
        }
    }

    /// Serves the client until it leaves or is disconnected; returns when both threads are done
    /// and the descriptor is closed.
    func run(commands: QMPCommandTable, greeting: JSONValue) {
        Log.debug("\(peer): QMP client connected")
        spawnThread { [self] in write() }
        if outbox.post(reply: encode(greeting)) { read(commands: commands) }
        // Input ended: let a client that still reads get its last replies, then stop the writer.
        outbox.waitUntilWritten(deadline: MonotonicClock.nanoseconds() + MonitorConnection.lingerSeconds * 1_000_000_000)
        outbox.close()
        disconnect(Int32(SHUT_RDWR))
        outbox.waitForWriter()
        released.withLock { closed in
            closed = true
            _ = Glibc.close(fd)
        }
        Log.debug("\(peer): QMP client disconnected")
    }

    /// The reader: commands in, replies posted; waits while the client leaves too much unread.
    private func read(commands: QMPCommandTable) {
        var session = QMPSession(commands: commands)
        var splitter = JSONStreamSplitter()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { SocketIO(fd: fd).receive(into: $0.baseAddress!, count: $0.count) }
            guard let count, count > 0 else { return }
            for piece in splitter.feed(buffer[0..<count]) {
                guard outbox.waitForRoom() else { return }
                // Shutdown waits for the reply of a command being handled (`quit`'s).
                outbox.commandStarted()
                defer { outbox.commandFinished() }
                guard let reply = session.handle(piece) else { continue }
                guard outbox.post(reply: encode(reply), acceptingEvents: session.negotiated) else { return }
            }
        }
    }

    /// The writer: sends each batch the outbox hands over, joined into one buffer.
    private func write() {
        defer { outbox.writerFinished() }
        while let batch = outbox.nextBatch() {
            var bytes: [UInt8] = []
            bytes.reserveCapacity(batch.reduce(0) { $0 + $1.bytes.count })
            for message in batch { bytes.append(contentsOf: message.bytes) }
            guard SocketIO(fd: fd).sendAll(bytes) else {
                outbox.close()
                return
            }
            outbox.written(batch)
        }
    }
}
