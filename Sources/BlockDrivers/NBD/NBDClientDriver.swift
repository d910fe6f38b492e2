#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock
import CLibNBD

/// The `nbd` protocol driver: a node whose bytes live on a remote NBD server, reached with libnbd.
///
/// Requests are sent with libnbd's asynchronous calls from the thread that makes them, so that
/// several threads (and a batch engine's whole batch) have requests in flight at once; one poller
/// thread reads the replies. When the server advertises multi-conn, several connections share the
/// requests. A server that goes away is reconnected in the background; meanwhile requests wait for
/// it up to `reconnect-delay` seconds and are sent again, or fail with EIO.
public final class NBDClientDriver: BlockDriver, AsyncTarget, @unchecked Sendable {
    public let driverName = "nbd"
    public let features: DriverFeatures
    public let length: UInt64
    /// The options the node was opened with.
    public let options: NBDClientOptions
    /// Connections wanted (more than one when the server advertises multi-conn).
    let connectionCount: Int
    /// True when the server negotiated `qemu:allocation-depth`.
    let hasAllocationDepth: Bool
    /// Largest zero-write or trim sent in one command.
    static let maxRangeCommand: UInt64 = 1 << 30
    let link: NBDLink
    var poller: NBDPoller!
    var reconnector: NBDReconnector!

    public var filename: String { options.uri }

    init(options: NBDClientOptions, first: NBDConnection, common: CommonNodeOptions) {
        self.options = options
        self.length = UInt64(max(0, first.size))
        let multiConn = first.can(nbd_can_multi_conn)
        self.connectionCount = multiConn ? 4 : 1
        self.hasAllocationDepth = first.hasContext("qemu:allocation-depth")
        var features = DriverFeatures()
        features.fua = first.can(nbd_can_fua) ? .native : .emulated
        features.fastZero = first.can(nbd_can_zero) && first.can(nbd_can_fast_zero)
        features.discard = first.can(nbd_can_trim) && common.discardUnmap
        features.needsFlush = first.can(nbd_can_flush) && !common.cacheNoFlush
        features.rotational = first.can(nbd_is_rotational)
        features.blockStatus = first.hasContext("base:allocation")
        let minimum = Int(first.blockSize(Int32(LIBNBD_SIZE_MINIMUM)))
        if minimum > 1 && minimum <= 65536 { features.alignment = minimum }
        let maximum = Int(first.blockSize(Int32(LIBNBD_SIZE_MAXIMUM)))
        if maximum > 0 { features.maxTransfer = min(features.maxTransfer, maximum) }
        self.features = features
        self.canZero = first.can(nbd_can_zero)
        self.link = NBDLink(first)
        poller = NBDPoller(connections: { [link] in link.live() }, died: { [weak self] connection in
            self?.connectionLost(ObjectIdentifier(connection))
        })
        reconnector = NBDReconnector(driver: self)
    }

    let canZero: Bool

    /// Opens `nbd` nodes.
    public static let opener: DriverOpener = { options, context throws(OptionError) in
        let settings = try NBDClientOptions.read(options)
        let deadline = MonotonicClock.nanoseconds() + (settings.openTimeout > 0 ? settings.openTimeout : 30) * 1_000_000_000
        var connection: NBDConnection?
        var lastError: BlockError?
        repeat {
            do throws(BlockError) {
                connection = try NBDConnection.connect(settings, deadline: deadline)
            } catch {
                lastError = error
                guard settings.openTimeout > 0, error.errno != ETIMEDOUT else { break }
                usleep(100_000)
            }
        } while connection == nil && settings.openTimeout > 0 && MonotonicClock.nanoseconds() < deadline
        guard let connection else {
            throw options.failure("Failed to connect to '\(settings.serverDescription)': \(lastError?.message ?? "timed out")",
                                  qmp: "Failed to connect to '\(settings.serverDescription)': \(lastError?.message ?? "timed out")")
        }
        if connection.isReadOnly && !context.common.readOnly {
            throw options.failure("NBD export is read-only; add read-only=on", qmp: "NBD export is read-only")
        }
        guard connection.size >= 0 else {
            throw options.failure("the NBD server did not tell the size of the export")
        }
        let driver = NBDClientDriver(options: settings, first: connection, common: context.common)
        driver.addConnections(deadline: deadline)
        return OpenedDriver(driver: driver)
    }

    /// Opens the further multi-conn connections; any that fail are left to the reconnector.
    private func addConnections(deadline: UInt64) {
        guard connectionCount > 1 else { return }
        for _ in 1..<connectionCount {
            guard let extra = try? NBDConnection.connect(options, deadline: deadline), UInt64(max(0, extra.size)) == length else { break }
            link.add(extra)
        }
        poller.wake()
    }

    // MARK: - Submission

    /// Sends `request` on a live connection, queues it until the server is back, or fails it.
    func submit(_ request: NBDRequest) {
        for _ in 0..<8 {
            switch link.route(reconnectDelay: options.reconnectDelay) {
            case .send(let connection):
                request.connection = ObjectIdentifier(connection)
                let error = request.issue(on: connection.handle)
                if error == 0 {
                    poller.sent(on: connection)
                    return
                }
                guard connection.isDead else {
                    request.completions.post(token: request.token, result: -error)
                    return
                }
                connectionLost(ObjectIdentifier(connection))
            case .queued(let expired):
                if expired {
                    request.completions.post(token: request.token, result: -EIO)
                } else if !link.park(request) {
                    request.completions.post(token: request.token, result: -EIO)
                } else {
                    reconnector.poke()
                }
                return
            }
        }
        request.completions.post(token: request.token, result: -EIO)
    }

    /// Called with a request's result (on the poller thread, or a submitting one).
    func finished(_ request: NBDRequest, error: Int32) {
        if error == 0 {
            request.completions.post(token: request.token, result: request.successResult)
            return
        }
        switch error {
        case ENOTCONN, ECONNRESET, EPIPE, ESHUTDOWN, ECONNABORTED:
            // The connection died under the request: send it again, or wait for the server.
            if let connection = request.connection { connectionLost(connection) }
            submit(request)
        default:
            request.completions.post(token: request.token, result: -error)
        }
    }

    /// Forgets a dead connection and starts reconnecting.
    func connectionLost(_ id: ObjectIdentifier) {
        if link.remove(id) {
            Log.warning("nbd: lost the connection to \(options.uri)\(options.reconnectDelay > 0 ? "; reconnecting (requests wait up to \(options.reconnectDelay) s)" : "; reconnecting")")
            poller.wake()
            reconnector.poke()
        }
    }

    /// Runs requests of `kind` over the range synchronously, split into commands of at most `chunk`
    /// bytes sent together; the first failure is thrown.
    @discardableResult
    func perform(_ kind: NBDRequest.Kind, buffer: UnsafeMutableRawPointer? = nil, at offset: UInt64, length: UInt64,
                 flags: UInt32 = 0, chunk: UInt64 = .max) throws(BlockError) -> NBDRequest {
        let completions = AsyncCompletions()
        var requests: [NBDRequest] = []
        var done: UInt64 = 0
        repeat {
            let count = min(chunk, length - done)
            requests.append(NBDRequest(kind, buffer: buffer.map { $0 + Int(done) }, length: count, offset: offset + done, flags: flags,
                                       token: requests.count, completions: completions, driver: self))
            done += count
        } while done < length
        for request in requests { submit(request) }
        var failure: Int32 = 0
        completions.wait(for: requests.count) { _, result in if result < 0 && failure == 0 { failure = -result } }
        if failure != 0 {
            throw BlockError(errno: failure, "nbd \(kind.rawValue) at \(offset)+\(length) on \(options.uri): \(String(cString: strerror(failure)))")
        }
        return requests[0]
    }

    // MARK: - BlockDriver

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        guard buffer.count > 0 else { return }
        try perform(.read, buffer: buffer.baseAddress, at: offset, length: UInt64(buffer.count))
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        guard buffer.count > 0 else { return }
        try perform(.write, buffer: UnsafeMutableRawPointer(mutating: buffer.baseAddress), at: offset, length: UInt64(buffer.count),
                    flags: fua ? UInt32(LIBNBD_CMD_FLAG_FUA) : 0)
    }

    public func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockError) {
        guard canZero else { throw .notSupported("the NBD server has no zero-write") }
        var wire: UInt32 = 0
        if !flags.contains(.mayUnmap) { wire |= UInt32(LIBNBD_CMD_FLAG_NO_HOLE) }
        if flags.contains(.fastOnly) { wire |= UInt32(LIBNBD_CMD_FLAG_FAST_ZERO) }
        if flags.contains(.fua) && features.fua == .native { wire |= UInt32(LIBNBD_CMD_FLAG_FUA) }
        guard length > 0 else { return }
        try perform(.zero, at: offset, length: length, flags: wire, chunk: NBDClientDriver.maxRangeCommand)
    }

    public func discard(at offset: UInt64, length: UInt64) throws(BlockError) {
        guard features.discard, length > 0 else { return }
        try perform(.trim, at: offset, length: length, chunk: NBDClientDriver.maxRangeCommand)
    }

    public func flush() throws(BlockError) {
        guard features.needsFlush else { return }
        try perform(.flush, at: 0, length: 0)
    }

    public func directTarget(at offset: UInt64, length: Int) -> DirectTarget? {
        DirectTarget(remote: self, offset: offset)
    }

    // MARK: - AsyncTarget

    public func submitRead(into buffer: UnsafeMutableRawPointer, length: Int, at offset: UInt64, token: Int, completions: AsyncCompletions) {
        submit(NBDRequest(.read, buffer: buffer, length: UInt64(length), offset: offset, flags: 0, token: token,
                          completions: completions, driver: self))
    }

    public func submitWrite(from buffer: UnsafeRawPointer, length: Int, at offset: UInt64, fua: Bool, token: Int, completions: AsyncCompletions) {
        if fua && features.fua != .native {
            // The server has no FUA: the write and a flush, before the result is posted.
            do throws(BlockError) {
                try write(UnsafeRawBufferPointer(start: buffer, count: length), at: offset, fua: false)
                try flush()
                completions.post(token: token, result: Int32(length))
            } catch {
                completions.post(token: token, result: -error.errno)
            }
            return
        }
        submit(NBDRequest(.write, buffer: UnsafeMutableRawPointer(mutating: buffer), length: UInt64(length), offset: offset,
                          flags: fua && features.fua == .native ? UInt32(LIBNBD_CMD_FLAG_FUA) : 0, token: token,
                          completions: completions, driver: self))
    }

    public func close() {
        reconnector.stop()
        poller.stop()
        link.closeAll()
    }
}
