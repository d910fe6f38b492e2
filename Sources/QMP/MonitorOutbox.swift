import LogOptionsClock

/// What one monitor client has yet to be sent, replies and events in the order they were posted.
/// Posting never blocks and never touches the socket: the client's writer thread takes the messages
/// and sends them, so that a client that does not read stalls nobody but its own writer.
///
/// Two bounds keep such a client from costing unbounded memory: events queued past `eventLimit`
/// bytes close the outbox (the caller disconnects the client, as QEMU drops a monitor whose output
/// it cannot deliver), and the client's own commands wait in `waitForRoom()` while more than
/// `replyBacklog` bytes are queued, so that a client pipelining commands without reading only
/// stops being read.
///
/// `@unchecked Sendable`: every `var` is guarded by `condition`, on which the writer thread waits
/// for messages and the command thread for room.
public final class MonitorOutbox: @unchecked Sendable {
    /// What became of a posted event.
    public enum EventOutcome: Sendable, Equatable {
        /// Queued for the writer.
        case queued
        /// Over `eventLimit`: not queued, and the outbox is now closed.
        case overflowed
        /// The outbox was already closed; dropped.
        case closed
        /// The client does not take events yet (it has not finished capabilities negotiation); dropped.
        case notAccepting
    }

    /// Most bytes of events waiting or being written; an event beyond them overflows the outbox.
    public let eventLimit: Int
    /// Bytes waiting or being written past which `waitForRoom()` waits.
    public let replyBacklog: Int

    private let condition = MonotonicCondition()
    private var pending: [Message] = []
    /// Bytes posted and not yet written (pending or in the writer's hands).
    private var queuedBytes = 0
    private var queuedEventBytes = 0
    private var closed = false
    private var writerDone = false
    /// A command is being handled: its reply is still to come.
    private var commandPending = false
    /// Events are taken: set with the reply that completed capabilities negotiation.
    private var acceptingEvents = false

    /// One message as it goes on the wire, and whether it counts against `eventLimit`.
    public struct Message: Sendable {
        /// The JSON text and its CRLF.
        public var bytes: [UInt8]
        /// True for an event, false for a reply or the greeting.
        public var isEvent: Bool
    }

    /// An open, empty outbox.
    public init(eventLimit: Int = 1 << 20, replyBacklog: Int = 256 << 10) {
        self.eventLimit = eventLimit
        self.replyBacklog = replyBacklog
    }

    /// Queues an event unless that would put more than `eventLimit` bytes of events in the outbox.
    public func post(event bytes: [UInt8]) -> EventOutcome {
        condition.withLock {
            guard !closed else { return .closed }
            guard acceptingEvents else { return .notAccepting }
            guard queuedEventBytes + bytes.count <= eventLimit else {
                closed = true
                condition.broadcast()
                return .overflowed
            }
            pending.append(Message(bytes: bytes, isEvent: true))
            queuedBytes += bytes.count
            queuedEventBytes += bytes.count
            condition.broadcast()
            return .queued
        }
    }

    /// Queues a reply (whatever its size); false when the outbox is closed. With `acceptingEvents`
    /// events are taken from then on, in the same step, so that none is lost or overtakes the reply.
    @discardableResult
    public func post(reply bytes: [UInt8], acceptingEvents: Bool = false) -> Bool {
        condition.withLock {
            guard !closed else { return false }
            pending.append(Message(bytes: bytes, isEvent: false))
            queuedBytes += bytes.count
            if acceptingEvents { self.acceptingEvents = true }
            condition.broadcast()
            return true
        }
    }

    /// Bytes posted and not yet written.
    public var backlog: Int { condition.withLock { queuedBytes } }

    /// Whether the outbox was closed (by `close()`, an overflow or a failed write).
    public var isClosed: Bool { condition.withLock { closed } }

    /// Waits until no more than `replyBacklog` bytes are waiting; false when the outbox closed.
    public func waitForRoom() -> Bool {
        condition.withLock {
            while !closed && queuedBytes > replyBacklog { condition.wait() }
            return !closed
        }
    }

    /// For the reader: a command is being handled (from here until its reply is posted).
    public func commandStarted() {
        condition.withLock { commandPending = true }
    }

    /// For the reader: the command's reply, if any, is posted.
    public func commandFinished() {
        condition.withLock {
            commandPending = false
            condition.broadcast()
        }
    }

    /// Waits until everything posted was written and no command is being handled, the outbox
    /// closed, or the monotonic clock passed `deadline` (nanoseconds); true when all was written.
    @discardableResult
    public func waitUntilWritten(deadline: UInt64) -> Bool {
        condition.withLock {
            while !closed && (queuedBytes > 0 || commandPending) && MonotonicClock.nanoseconds() < deadline {
                condition.wait(until: deadline)
            }
            return queuedBytes == 0 && !commandPending
        }
    }

    /// For the writer: waits for messages and takes all of them; nil once the outbox is closed.
    public func nextBatch() -> [Message]? {
        condition.withLock {
            while !closed && pending.isEmpty { condition.wait() }
            guard !closed else { return nil }
            defer { pending = [] }
            return pending
        }
    }

    /// For the writer: the messages of a batch are on the wire.
    public func written(_ batch: [Message]) {
        condition.withLock {
            for message in batch {
                queuedBytes -= message.bytes.count
                if message.isEvent { queuedEventBytes -= message.bytes.count }
            }
            condition.broadcast()
        }
    }

    /// Closes the outbox: nothing more is queued, the writer stops, waiters return.
    public func close() {
        condition.withLock {
            closed = true
            condition.broadcast()
        }
    }

    /// For the writer: it has stopped and no longer uses the socket.
    public func writerFinished() {
        condition.withLock {
            closed = true
            writerDone = true
            condition.broadcast()
        }
    }

    /// Waits until the writer called `writerFinished()`.
    public func waitForWriter() {
        condition.withLock {
            while !writerDone { condition.wait() }
        }
    }
}
