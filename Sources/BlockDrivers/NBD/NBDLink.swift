#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock

/// The live connections of an `nbd` node, and the requests that wait for the server to come back.
final class NBDLink: @unchecked Sendable {
    /// Where a request goes.
    enum Route {
        /// Send it on this connection.
        case send(NBDConnection)
        /// No connection: park it until one is back, or fail it when the reconnect delay has passed (`expired`).
        case queued(expired: Bool)
    }

    private struct State {
        var connections: [NBDConnection] = []
        /// Dead connections, kept until no callback of theirs can be running (see `live`).
        var dead: [NBDConnection] = []
        var next = 0
        /// When the last connection was lost (MonotonicClock nanoseconds); nil while one is up.
        var lostAt: UInt64?
        /// True once the reconnect delay passed without a connection: requests fail at once.
        var expired = false
        var parked: [NBDRequest] = []
        var closed = false
    }

    private let state = MonotonicCondition()
    private var current = State()

    init(_ first: NBDConnection) {
        current.connections = [first]
    }

    /// The connections to poll. Dead ones dropped earlier are released here, on the poller thread,
    /// outside any libnbd callback.
    func live() -> [NBDConnection] {
        let released: [NBDConnection] = state.withLock {
            let dead = current.dead
            current.dead.removeAll()
            return dead
        }
        _ = released
        return state.withLock { current.connections }
    }

    /// How many connections are up.
    var count: Int { state.withLock { current.connections.count } }

    /// Picks the connection for the next request (round robin).
    @inline(__always)
    func route(reconnectDelay: UInt64) -> Route {
        state.withLock {
            let connections = current.connections
            if !connections.isEmpty {
                current.next &+= 1
                return .send(connections[current.next % connections.count])
            }
            return .queued(expired: current.expired || reconnectDelay == 0 || current.closed)
        }
    }

    /// Parks a request until a connection is back; false when it must fail now.
    func park(_ request: NBDRequest) -> Bool {
        state.withLock {
            guard !current.expired, !current.closed, current.connections.isEmpty else { return false }
            current.parked.append(request)
            return true
        }
    }

    /// Removes a dead connection; true when it was live (the first to notice reports it).
    func remove(_ id: ObjectIdentifier) -> Bool {
        state.withLock {
            guard let index = current.connections.firstIndex(where: { ObjectIdentifier($0) == id }) else { return false }
            current.dead.append(current.connections.remove(at: index))
            if current.connections.isEmpty && current.lostAt == nil {
                current.lostAt = MonotonicClock.nanoseconds()
            }
            state.broadcast()
            return true
        }
    }

    /// Adds a connection; returns the requests that waited for one.
    @discardableResult
    func add(_ connection: NBDConnection) -> [NBDRequest] {
        state.withLock {
            current.connections.append(connection)
            current.lostAt = nil
            current.expired = false
            let parked = current.parked
            current.parked.removeAll()
            return parked
        }
    }

    /// Fails parked requests when the reconnect delay has passed; returns them and how long is left
    /// (nanoseconds, nil when nothing waits for a deadline).
    func expire(reconnectDelay: UInt64) -> (failed: [NBDRequest], remaining: UInt64?) {
        state.withLock {
            guard let lostAt = current.lostAt, current.connections.isEmpty else { return ([], nil) }
            let deadline = lostAt + reconnectDelay * 1_000_000_000
            let now = MonotonicClock.nanoseconds()
            if now >= deadline {
                current.expired = true
                let failed = current.parked
                current.parked.removeAll()
                return (failed, nil)
            }
            return ([], deadline - now)
        }
    }

    /// Waits until `wanted` connections are not all up, or the link closes, or `timeout` passes;
    /// returns how many are missing (0 when closed).
    func waitForWork(wanted: Int, timeout: UInt64?) -> Int {
        state.withLock {
            if !current.closed && current.connections.count >= wanted {
                if let timeout {
                    state.wait(until: MonotonicClock.nanoseconds() + timeout)
                } else {
                    state.wait()
                }
            }
            return current.closed ? 0 : max(0, wanted - current.connections.count)
        }
    }

    /// Sleeps up to `nanoseconds` unless the link closes.
    func pause(_ nanoseconds: UInt64) {
        state.withLock {
            if !current.closed { state.wait(until: MonotonicClock.nanoseconds() + nanoseconds) }
        }
    }

    /// True once `closeAll` ran.
    var isClosed: Bool { state.withLock { current.closed } }

    /// Marks the link closed and wakes whoever waits.
    func markClosed() -> [NBDRequest] {
        state.withLock {
            current.closed = true
            let parked = current.parked
            current.parked.removeAll()
            state.broadcast()
            return parked
        }
    }

    /// Wakes the reconnector.
    func poke() {
        state.withLock { state.broadcast() }
    }

    /// Drops every connection (the driver closes).
    func closeAll() {
        let dropped: ([NBDConnection], [NBDConnection]) = state.withLock {
            let all = (current.connections, current.dead)
            current.connections.removeAll()
            current.dead.removeAll()
            return all
        }
        _ = dropped
    }
}
