import LogOptionsClock
import Synchronization

/// A throttle group: limits that apply to the combined reads and writes of its members (devices, or
/// `throttle` filter nodes). When members wait, the group serves them in turn (round-robin), so one
/// busy member cannot starve the others. Requests wait on their own thread, sleeping until the
/// buckets allow them or the limits change; they are never failed.
///
/// `@unchecked Sendable`: every `var` is guarded by `condition`, whose mutex the waiting requests
/// release while they sleep (a `Mutex<State>` cannot be waited on).
public final class ThrottleGroup: @unchecked Sendable {
    /// The group's name (`group` of block_set_io_throttle, `id` of a throttle-group object).
    public let name: String
    /// Whether the group stays when its last member leaves (created by `--object throttle-group`).
    public let isPersistent: Bool
    private let condition = MonotonicCondition()
    // Guarded by `condition`.
    private var state: ThrottleState
    private var members: [ObjectIdentifier] = []
    private var waiting: [ObjectIdentifier: Int] = [:]
    private var turn = 0
    /// Counts the wake-ups, so that a request that looked before sleeping does not sleep through one.
    private var wakeups: UInt64 = 0
    /// Requests that had to wait for the limits (counted once per request).
    public let waits = Atomic<UInt64>(0)
    /// Nanoseconds requests spent waiting for the limits, added when each is admitted.
    public let waitNanoseconds = Atomic<UInt64>(0)

    /// A group with `limits` and no members.
    public init(name: String, limits: ThrottleLimits, persistent: Bool = false) {
        self.name = name
        self.isPersistent = persistent
        self.state = ThrottleState(limits: limits, now: MonotonicClock.nanoseconds())
    }

    /// The limits in force.
    public var limits: ThrottleLimits { condition.withLock { state.limits } }

    /// Replaces the limits; waiting requests are reconsidered at once.
    public func setLimits(_ limits: ThrottleLimits) {
        condition.withLock {
            state.setLimits(limits, now: MonotonicClock.nanoseconds())
            wakeAll()
        }
    }

    /// How many members the group has.
    public var memberCount: Int { condition.withLock { members.count } }

    /// Adds a member (a device or a throttle node).
    public func join(_ member: AnyObject) {
        condition.withLock {
            let id = ObjectIdentifier(member)
            if !members.contains(id) { members.append(id) }
        }
    }

    /// Removes a member; its waiting requests stop waiting on this group. Returns how many members remain.
    @discardableResult
    public func leave(_ member: AnyObject) -> Int {
        condition.withLock {
            let id = ObjectIdentifier(member)
            if let index = members.firstIndex(of: id) {
                members.remove(at: index)
                if turn > index { turn -= 1 }
            }
            waiting.removeValue(forKey: id)
            wakeAll()
            return members.count
        }
    }

    /// Waits until a read or write of `bytes` by `member` may start, and accounts it. `beforeSleeping`
    /// runs (without the group's lock) before the first sleep. False when `member` is not (or no
    /// longer) in the group: the request was not accounted.
    public func admit(_ member: AnyObject, isWrite: Bool, bytes: UInt64, beforeSleeping: () -> Void) -> Bool {
        let id = ObjectIdentifier(member)
        var slept = false
        var sleptSince: UInt64 = 0
        defer { if slept { waitNanoseconds.add(MonotonicClock.nanoseconds() &- sleptSince, ordering: .relaxed) } }
        while true {
            let (admitted, deadline, seen) = condition.withLock { () -> (Bool?, UInt64, UInt64) in
                guard members.contains(id) else { return (false, 0, wakeups) }
                let now = MonotonicClock.nanoseconds()
                state.leak(now: now)
                let wait = state.wait(isWrite: isWrite)
                let holder = turnHolder()
                if wait == 0 && (holder == nil || holder == id) {
                    state.account(isWrite: isWrite, bytes: bytes)
                    finishWaiting(id, registered: slept)
                    return (true, 0, wakeups)
                }
                if !slept { waiting[id, default: 0] += 1 }
                // Not this member's turn: the holder wakes everyone when it goes; 100 ms is a safety net.
                return (nil, now + (wait > 0 ? wait : 100_000_000), wakeups)
            }
            if let admitted { return admitted }
            if !slept {
                slept = true
                sleptSince = MonotonicClock.nanoseconds()
                waits.add(1, ordering: .relaxed)
                beforeSleeping()
                // The output went out without the lock; look again before sleeping.
                continue
            }
            condition.withLock {
                if members.contains(id) && wakeups == seen { condition.wait(until: deadline) }
            }
        }
    }

    /// The member whose waiting requests go next, if any waits.
    private func turnHolder() -> ObjectIdentifier? {
        guard !members.isEmpty else { return nil }
        for step in 0..<members.count {
            let candidate = members[(turn + step) % members.count]
            if waiting[candidate, default: 0] > 0 { return candidate }
        }
        return nil
    }

    /// Passes the turn on after `id` was served, and wakes the others when they wait.
    private func finishWaiting(_ id: ObjectIdentifier, registered: Bool) {
        if registered, let count = waiting[id] {
            if count <= 1 { waiting.removeValue(forKey: id) } else { waiting[id] = count - 1 }
        }
        if let index = members.firstIndex(of: id) { turn = (index + 1) % max(1, members.count) }
        if !waiting.isEmpty { wakeAll() }
    }

    /// Wakes every sleeping request (lock held).
    private func wakeAll() {
        wakeups &+= 1
        condition.broadcast()
    }
}
