#if canImport(Glibc)
import Glibc
#endif
import LogOptionsClock

/// What a device does when a read or write fails (`rerror`, `werror`; QEMU's `BlockdevOnError`).
public enum BlockErrorPolicy: String, Sendable, CaseIterable {
    /// The error goes to the client.
    case report
    /// The request completes as if it had succeeded.
    case ignore
    /// ENOSPC pauses the device (as `stop`); other errors go to the client.
    case enospc
    /// The device pauses; the request is retried when it resumes (`cont`).
    case stop

    /// The action for an error with `errno`.
    public func action(errno code: Int32) -> IOErrorAction {
        switch self {
        case .report: return .report
        case .ignore: return .ignore
        case .stop: return .stop
        case .enospc: return BlockBackend.isNoSpace(code) ? .stop : .report
        }
    }
}

/// How the most recent failed request of a device ended, as query-block's `io-status` reports it.
public enum DeviceIOStatus: UInt8, Sendable {
    /// No request failed since the last `cont`.
    case ok
    /// A request failed.
    case failed
    /// A request failed because the storage was full.
    case noSpace
}

/// Why a device is paused.
public struct PauseReasons: OptionSet, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// QMP `stop`.
    public static let stopped = PauseReasons(rawValue: 1 << 0)
    /// A failed request under a `stop` (or `enospc`) policy.
    public static let ioError = PauseReasons(rawValue: 1 << 1)
}

/// The pause state of a device and the requests that wait on it.
///
/// `@unchecked Sendable`: `reasons` is guarded by `condition`, on which paused requests wait.
final class PauseGate: @unchecked Sendable {
    private let condition = MonotonicCondition()
    private var reasons: PauseReasons = []  // guarded by `condition`

    /// Adds a reason; true when the device was running.
    func pause(_ reason: PauseReasons) -> Bool {
        condition.withLock {
            defer { reasons.insert(reason) }
            return reasons.isEmpty
        }
    }

    /// Removes reasons; true when the device now runs. Wakes the waiting requests.
    func resume(_ removed: PauseReasons) -> Bool {
        condition.withLock {
            reasons.subtract(removed)
            if reasons.isEmpty { condition.broadcast() }
            return reasons.isEmpty
        }
    }

    /// The current reasons (empty: running).
    var current: PauseReasons { condition.withLock { reasons } }

    /// Blocks while paused; `beforeWaiting` runs (unlocked) first when it has to wait.
    func waitWhilePaused(_ beforeWaiting: () -> Void) {
        guard !current.isEmpty else { return }
        beforeWaiting()
        condition.withLock {
            while !reasons.isEmpty { condition.wait() }
        }
    }
}

extension BlockBackend {
    /// Whether an errno means the storage is full (`ENOSPC`, and the quota and file-size variants).
    public static func isNoSpace(_ code: Int32) -> Bool {
        code == ENOSPC || code == EDQUOT || code == EFBIG
    }

    /// Bits of `admissionFlags`.
    static let throttledFlag: UInt8 = 1 << 0
    static let pausedFlag: UInt8 = 1 << 1

    /// Whether requests must call `admit` before they run (a throttle group, or paused). Read after
    /// `current()`; a change of it starts a new generation.
    public var needsAdmission: Bool { admissionFlags.load(ordering: .acquiring) != 0 }

    /// Waits until a request may run: while the device is paused, and for reads and writes (`isWrite`
    /// non-nil) until its throttle group admits `bytes`. `beforeWaiting` runs before any wait (a
    /// connection sends its finished replies). Requests wait; they are never failed.
    public func admit(isWrite: Bool?, bytes: UInt64, beforeWaiting: () -> Void) {
        while true {
            pauseGate.waitWhilePaused(beforeWaiting)
            guard let isWrite, let group = throttleGroup else { return }
            if group.admit(self, isWrite: isWrite, bytes: bytes, beforeSleeping: beforeWaiting) {
                // Paused while it waited for the throttle: wait for that too, then go.
                pauseGate.waitWhilePaused(beforeWaiting)
                return
            }
            // The device left that group meanwhile: look again.
        }
    }

    // MARK: - Pausing

    /// Why the device is paused (empty: it runs).
    public var pauseReasons: PauseReasons { pauseGate.current }

    /// Pauses the device's requests (queued, not failed); true when it was running.
    @discardableResult
    public func pause(_ reason: PauseReasons) -> Bool {
        let wasRunning = pauseGate.pause(reason)
        setAdmissionFlag(BlockBackend.pausedFlag, true)
        return wasRunning
    }

    /// Removes pause reasons; when none is left the waiting requests go on (failed ones are retried).
    /// True when the device now runs.
    @discardableResult
    public func resume(_ reasons: PauseReasons) -> Bool {
        let running = pauseGate.resume(reasons)
        if running { setAdmissionFlag(BlockBackend.pausedFlag, false) }
        return running
    }

    /// Blocks the calling request while the device is paused.
    public func waitWhilePaused() {
        pauseGate.waitWhilePaused {}
    }

    // MARK: - Error policy

    /// The policy for failed reads (`rerror`).
    public var readErrorPolicy: BlockErrorPolicy {
        get { BlockErrorPolicy.allCases[Int(errorPolicies.load(ordering: .relaxed) & 0xF)] }
        set { updatePolicies(read: newValue, write: writeErrorPolicy) }
    }

    /// The policy for failed writes, zero-writes, trims and flushes (`werror`).
    public var writeErrorPolicy: BlockErrorPolicy {
        get { BlockErrorPolicy.allCases[Int(errorPolicies.load(ordering: .relaxed) >> 4)] }
        set { updatePolicies(read: readErrorPolicy, write: newValue) }
    }

    private func updatePolicies(read: BlockErrorPolicy, write: BlockErrorPolicy) {
        let index = { (policy: BlockErrorPolicy) in UInt8(BlockErrorPolicy.allCases.firstIndex(of: policy)!) }
        errorPolicies.store(index(read) | index(write) << 4, ordering: .relaxed)
    }

    /// The io-status of query-block.
    public var ioStatus: DeviceIOStatus { DeviceIOStatus(rawValue: ioStatusValue.load(ordering: .relaxed)) ?? .ok }

    /// Sets the io-status back to ok (`cont`).
    public func resetIOStatus() { ioStatusValue.store(DeviceIOStatus.ok.rawValue, ordering: .relaxed) }

    /// Applies the device's rerror/werror policy to a failed request: sends BLOCK_IO_ERROR (devices
    /// with an id) and, for `stop`, sets the io-status and pauses the device before returning.
    /// The caller then answers the client (`report`), answers success (`ignore`), or waits with
    /// `waitWhilePaused` and retries (`stop`).
    public func handleError(errno code: Int32, message: String, isWrite: Bool) -> IOErrorAction {
        let policy = isWrite ? writeErrorPolicy : readErrorPolicy
        let action = policy.action(errno: code)
        let noSpace = BlockBackend.isNoSpace(code)
        if action == .stop {
            ioStatusValue.store((noSpace ? DeviceIOStatus.noSpace : .failed).rawValue, ordering: .relaxed)
            if pause(.ioError) {
                Log.warning("device '\(id ?? "")' paused after a failed \(isWrite ? "write" : "read"): \(message); 'cont' resumes it")
            }
        }
        if let id, let events {
            events.send(.ioError(device: id, isWrite: isWrite, action: action, noSpace: noSpace, reason: message))
        }
        return action
    }
}
