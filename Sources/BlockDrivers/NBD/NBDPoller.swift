#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import CLibNBD
import Synchronization

/// The thread that drives a driver's libnbd handles: it waits for their sockets and lets libnbd read
/// replies and send what is queued, which runs the requests' completion callbacks.
/// Commands are sent from the threads that submit them; the poller is woken (a pipe) when one of
/// them leaves bytes unsent, or when the set of connections changes.
final class NBDPoller: @unchecked Sendable {
    /// A pipe: the poller polls `wakeFD`, others write to `wakeWriteFD`.
    private let wakeFD: Int32
    private let wakeWriteFD: Int32
    private var thread = pthread_t()
    private let stopping = Atomic<Bool>(false)
    /// The connections to drive, and what to do with a dead one.
    private let connections: @Sendable () -> [NBDConnection]
    private let died: @Sendable (NBDConnection) -> Void

    init(connections: @escaping @Sendable () -> [NBDConnection], died: @escaping @Sendable (NBDConnection) -> Void) {
        var ends: [Int32] = [0, 0]
        precondition(pipe(&ends) == 0, "pipe failed")
        for end in ends {
            _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
        }
        self.wakeFD = ends[0]
        self.wakeWriteFD = ends[1]
        self.connections = connections
        self.died = died
        thread = startThread { [self] in run() }
    }

    /// Makes the poller look at its connections again.
    func wake() {
        var one: UInt8 = 1
        _ = Glibc.write(wakeWriteFD, &one, 1)
    }

    /// Wakes the poller when `connection` has bytes left to send.
    @inline(__always)
    func sent(on connection: NBDConnection) {
        if connection.wantsWrite { wake() }
    }

    /// Stops the thread and waits for it.
    func stop() {
        stopping.store(true, ordering: .releasing)
        wake()
        pthread_join(thread, nil)
        Glibc.close(wakeFD)
        Glibc.close(wakeWriteFD)
    }

    private func run() {
        var fds: [pollfd] = []
        while !stopping.load(ordering: .acquiring) {
            var live = connections()
            fds.removeAll(keepingCapacity: true)
            fds.append(pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0))
            for connection in live {
                var events = Int16(POLLIN)
                if connection.wantsWrite { events |= Int16(POLLOUT) }
                fds.append(pollfd(fd: connection.fd, events: events, revents: 0))
            }
            let ready = poll(&fds, nfds_t(fds.count), -1)
            if ready < 0 { continue }
            if fds[0].revents != 0 {
                var drained = [UInt8](repeating: 0, count: 64)
                while Glibc.read(wakeFD, &drained, drained.count) > 0 {}
            }
            for (index, connection) in live.enumerated() {
                let revents = Int32(fds[index + 1].revents)
                if revents & (POLLIN | POLLHUP | POLLERR) != 0 { _ = nbd_aio_notify_read(connection.handle) }
                if revents & POLLOUT != 0 { _ = nbd_aio_notify_write(connection.handle) }
                if connection.fd < 0 || connection.isDead { died(connection) }
            }
            live.removeAll()
        }
    }
}

private final class ThreadBody: @unchecked Sendable {
    let run: @Sendable () -> Void
    init(_ run: @escaping @Sendable () -> Void) { self.run = run }
}

/// Starts a joinable thread.
func startThread(_ body: @escaping @Sendable () -> Void) -> pthread_t {
    var thread = pthread_t()
    let box = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
    let result = pthread_create(&thread, nil, { argument in
        Unmanaged<ThreadBody>.fromOpaque(argument!).takeRetainedValue().run()
        return nil
    }, box)
    precondition(result == 0, "pthread_create failed: \(result)")
    return thread
}
