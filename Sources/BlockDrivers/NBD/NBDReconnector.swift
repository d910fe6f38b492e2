#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock

/// The background thread of an `nbd` node that brings lost connections back: it retries with a
/// growing pause (0.1 s to 2 s), sends the parked requests again once a connection is up, and fails
/// them with EIO when `reconnect-delay` passes first. A server that comes back with another size
/// is refused.
final class NBDReconnector: @unchecked Sendable {
    private unowned let driver: NBDClientDriver
    private var thread = pthread_t()

    init(driver: NBDClientDriver) {
        self.driver = driver
        thread = startThread { [self] in run() }
    }

    /// Makes the thread look at the connections again.
    func poke() { driver.link.poke() }

    /// Stops the thread and fails what still waits.
    func stop() {
        for request in driver.link.markClosed() { request.completions.post(token: request.token, result: -EIO) }
        pthread_join(thread, nil)
    }

    private func run() {
        let link = driver.link
        let options = driver.options
        var pause: UInt64 = 100_000_000
        var reportedSize = false
        while true {
            let (failed, remaining) = link.expire(reconnectDelay: options.reconnectDelay)
            for request in failed { request.completions.post(token: request.token, result: -EIO) }
            if !failed.isEmpty {
                Log.warning("nbd: \(options.uri) did not come back within reconnect-delay=\(options.reconnectDelay); failing requests with EIO")
            }
            let missing = link.waitForWork(wanted: driver.connectionCount, timeout: remaining)
            if link.isClosed { return }
            if missing == 0 {
                pause = 100_000_000
                continue
            }
            let deadline = MonotonicClock.nanoseconds() + 5_000_000_000
            do {
                let connection = try NBDConnection.connect(options, deadline: deadline)
                let size = UInt64(max(0, connection.size))
                guard size == driver.length else {
                    if !reportedSize {
                        Log.error("nbd: \(options.uri) came back with \(size) bytes instead of \(driver.length); refusing it")
                        reportedSize = true
                    }
                    throw BlockError.io("size changed")
                }
                reportedSize = false
                let wasDown = link.count == 0
                let parked = link.add(connection)
                driver.poller.wake()
                if wasDown { Log.info("nbd: reconnected to \(options.uri)") }
                for request in parked { driver.submit(request) }
                pause = 100_000_000
            } catch {
                link.pause(min(pause, remaining ?? pause))
                pause = min(pause * 2, 2_000_000_000)
            }
        }
    }
}
