#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock
import Sockets
import Synchronization

/// One job: its status in QEMU's state machine, its progress and speed limit, the requests made
/// to it (pause, cancel, complete, finalize, dismiss), and the thread its driver runs on.
///
/// Status changes and events happen under the job's lock, so they are sent in order. The driver
/// calls `pausePoint`, `throttle`, `progress` and `setReady` from the job's thread; commands call
/// the verbs from the monitor's thread.
public final class Job: @unchecked Sendable {
    /// The job's identifier (`job-id`, or the device name).
    public let id: String
    /// The kind of job.
    public let kind: JobKind
    /// Whether the job finalizes itself once its work is done.
    public let autoFinalize: Bool
    /// Whether the job disappears once concluded.
    public let autoDismiss: Bool
    /// What the job does.
    public let driver: any JobDriver
    private let events: @Sendable (JobSnapshot, JobEvent) -> Void
    private let removed: @Sendable (Job) -> Void
    private let lock = MonotonicCondition()
    // Guarded by `lock`.
    private var state: JobStatus = .undefined
    private var userPaused = false
    private var hardCancel = false
    private var softCancel = false
    private var completeAsked = false
    private var finalizeAsked = false
    private var sleeping = true
    private var limit = RateLimit()
    private var done: UInt64 = 0
    private var expected: UInt64 = 0
    private var failure: String?
    private var io: JobIOStatus = .ok
    /// Set while the job's thread waits in `idle`: only then does `wake` take the lock.
    private let idling = Atomic<Bool>(false)

    /// Creates a job in status `undefined`; `start` runs it.
    public init(
        id: String, driver: any JobDriver, speed: UInt64 = 0, autoFinalize: Bool = true, autoDismiss: Bool = true,
        events: @escaping @Sendable (JobSnapshot, JobEvent) -> Void, removed: @escaping @Sendable (Job) -> Void
    ) {
        self.id = id
        self.kind = driver.kind
        self.driver = driver
        self.autoFinalize = autoFinalize
        self.autoDismiss = autoDismiss
        self.events = events
        self.removed = removed
        self.limit.bytesPerSecond = speed
    }

    /// QEMU's rule for job ids: a letter first, then letters, digits, '-', '.', '_'.
    public static func isValidID(_ id: String) -> Bool {
        guard let first = id.unicodeScalars.first, first.isASCII, first.properties.isAlphabetic else { return false }
        return id.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "-._".unicodeScalars.contains($0)) }
    }

    // MARK: - State as others see it

    /// The current status.
    public var status: JobStatus { locked { state } }

    /// The job's state now.
    public var snapshot: JobSnapshot { locked { snapshotLocked() } }

    private func snapshotLocked() -> JobSnapshot {
        JobSnapshot(
            id: id, kind: kind, status: state, current: done, total: max(expected, done), speed: limit.bytesPerSecond,
            busy: !sleeping && (state == .running || state == .ready), paused: userPaused,
            ready: state == .ready || state == .standby, ioStatus: io, autoFinalize: autoFinalize, autoDismiss: autoDismiss,
            error: failure)
    }

    /// Whether the job was cancelled (not a ready mirror's soft cancel): the driver stops.
    public var isCancelled: Bool { locked { hardCancel } }

    /// Whether a ready job was asked to finish: by complete (pivot) or by a soft cancel (no pivot).
    public var finishRequested: Bool { locked { completeAsked || softCancel } }

    /// Whether the job ends without its graph change: a ready mirror cancelled with force false.
    public var isSoftCancelled: Bool { locked { softCancel } }

    // MARK: - Life cycle

    /// Sends `created` and `running` (before the command that started the job replies, as QEMU's
    /// job_start does), then runs the driver on a thread of its own.
    public func start() {
        locked {
            transition(.created)
            transition(.running)
            sleeping = false
        }
        spawnThread(stackSize: 1 << 20) { [self] in runOnThread() }
    }

    private func runOnThread() {
        let proceed = locked { !hardCancel }
        var error: JobError?
        if proceed {
            do {
                try driver.run(self)
            } catch let failed {
                error = failed
            }
        }
        lock.lock()
        sleeping = true
        // A cancelled job's driver may stop with an error: the job was cancelled, not failed.
        if let error, !hardCancel {
            failure = error.message
        }
        if failure != nil || hardCancel {
            abortLocked()
            lock.unlock()
            return
        }
        transition(.waiting)
        transition(.pending)
        if !autoFinalize {
            emit(.pending)
            while !finalizeAsked && !hardCancel { lock.wait() }
            if hardCancel {
                abortLocked()
                lock.unlock()
                return
            }
        }
        finalizeLocked()
        lock.unlock()
    }

    /// Commits the job's changes and concludes it; the lock is held.
    private func finalizeLocked() {
        do {
            try unlocked { () throws(JobError) in try driver.commit(self) }
        } catch {
            failure = error.message
            abortLocked()
            return
        }
        // QEMU cleans up before it sends the event: a command sent on the event finds the nodes free.
        unlocked { driver.clean(self) }
        emit(.completed(error: nil))
        concludeLocked()
    }

    /// Aborts after a failure or cancel; the lock is held.
    private func abortLocked() {
        transition(.aborting)
        unlocked { driver.abort(self) }
        unlocked { driver.clean(self) }
        emit(failure != nil ? .completed(error: failure) : .cancelled)
        concludeLocked()
    }

    private func concludeLocked() {
        transition(.concluded)
        lock.broadcast()
        if autoDismiss { dismissLocked() }
    }

    private func dismissLocked() {
        transition(.null)
        removed(self)
    }

    // MARK: - Verbs (commands)

    /// Refuses a verb the current status does not accept, with QEMU's message.
    private func check(_ verb: JobVerb) throws(JobError) {
        guard verb.allowed(in: state) else {
            throw JobError("Job '\(id)' in state '\(state.rawValue)' cannot accept command verb '\(verb.rawValue)'")
        }
    }

    /// `block-job-pause` / `job-pause`: the job pauses at its next pause point.
    public func pause() throws(JobError) {
        try locked { () throws(JobError) in
            try check(.pause)
            guard !userPaused else { throw JobError("Job is already paused") }
            userPaused = true
            lock.broadcast()
        }
    }

    /// `block-job-resume` / `job-resume`; a job stopped by an I/O error retries it.
    public func resume() throws(JobError) {
        try locked { () throws(JobError) in
            try check(.resume)
            guard userPaused else { throw JobError("Can't resume a job that was not paused") }
            userPaused = false
            io = .ok
            lock.broadcast()
        }
    }

    /// `block-job-set-speed`.
    public func setSpeed(_ speed: UInt64) throws(JobError) {
        try locked { () throws(JobError) in
            try check(.setSpeed)
            limit.bytesPerSecond = speed
            lock.broadcast()
        }
    }

    /// `block-job-cancel` (force false: a ready job that can be completed ends without its graph
    /// change, as a success) or `job-cancel` / force true.
    public func cancel(force: Bool) throws(JobError) {
        try locked { () throws(JobError) in
            try check(.cancel)
            if !force && driver.completable && (state == .ready || state == .standby) {
                softCancel = true
            } else {
                hardCancel = true
            }
            userPaused = false
            lock.broadcast()
        }
    }

    /// `block-job-complete` / `job-complete`.
    public func complete() throws(JobError) {
        try locked { () throws(JobError) in
            try check(.complete)
            guard driver.completable, !hardCancel else { throw JobError("The active block job '\(id)' cannot be completed") }
            completeAsked = true
            lock.broadcast()
        }
    }

    /// `job-finalize`: returns once the job has concluded (or aborted).
    public func finalize() throws(JobError) {
        try locked { () throws(JobError) in
            try check(.finalize)
            finalizeAsked = true
            lock.broadcast()
            while state == .pending { lock.wait() }
        }
    }

    /// `job-dismiss`.
    public func dismiss() throws(JobError) {
        try locked { () throws(JobError) in
            try check(.dismiss)
            dismissLocked()
        }
    }

    /// Cancels the job and waits until it has concluded (daemon shutdown).
    public func cancelAndWait() {
        locked {
            if state.isFinished { return }
            hardCancel = true
            userPaused = false
            lock.broadcast()
            while !state.isFinished && state != .undefined { lock.wait() }
        }
    }

    // MARK: - Calls from the driver (the job's thread)

    /// Sets the progress: `current` bytes done of `total` expected.
    public func progress(current: UInt64, total: UInt64) {
        locked {
            done = current
            expected = total
        }
    }

    /// Adds to the work expected (new dirty data) or done.
    public func addProgress(done more: UInt64 = 0, expected extra: UInt64 = 0) {
        locked {
            done += more
            expected += extra
        }
    }

    /// How many chunks of `chunkSize` bytes one request of the job may copy, at most `most`: a
    /// speed limit makes it at most a tenth of a second's worth, so that a slow job sleeps often.
    public func chunksPerRequest(chunkSize: UInt64, most: Int) -> Int {
        let speed = locked { self.limit.bytesPerSecond }
        guard speed > 0 else { return most }
        return max(1, min(most, Int(speed / 10 / max(chunkSize, 1))))
    }

    /// The progress so far.
    public var progressValues: (current: UInt64, total: UInt64) { locked { (done, max(expected, done)) } }

    /// Sends `ready` (status and BLOCK_JOB_READY) once.
    public func setReady() {
        locked {
            guard state == .running else { return }
            transition(.ready)
            emit(.ready)
        }
    }

    /// Waits while the job is paused (status paused, or standby when ready); returns at once
    /// otherwise. Returns false when the job was cancelled.
    @discardableResult
    public func pausePoint() -> Bool {
        locked {
            pauseLocked()
            return !hardCancel
        }
    }

    private func pauseLocked() {
        guard userPaused && !hardCancel else { return }
        let resumeTo = state
        guard resumeTo == .running || resumeTo == .ready else { return }
        transition(resumeTo == .ready ? .standby : .paused)
        sleeping = true
        while userPaused && !hardCancel { lock.wait() }
        sleeping = false
        transition(resumeTo)
    }

    /// Accounts `bytes` of the job's own I/O against its speed limit, sleeping as long as the
    /// limit asks (waking early on cancel, pause or a new speed); then a pause point.
    public func throttle(_ bytes: UInt64) {
        locked {
            var wait = limit.account(bytes, now: Job.now())
            while wait > 0 && !hardCancel && !userPaused {
                sleeping = true
                lock.wait(until: MonotonicClock.nanoseconds() + UInt64(wait))
                sleeping = false
                let now = Job.now()
                let speed = limit.bytesPerSecond
                if speed == 0 { break }
                wait = limit.account(0, now: now)
            }
            pauseLocked()
        }
    }

    /// Sleeps up to `nanoseconds`, waking early on any request to the job (or `wake`).
    public func idle(_ nanoseconds: UInt64) {
        locked {
            guard !hardCancel && !completeAsked && !softCancel && !userPaused else { return }
            sleeping = true
            idling.store(true, ordering: .sequentiallyConsistent)
            lock.wait(until: MonotonicClock.nanoseconds() + nanoseconds)
            idling.store(false, ordering: .sequentiallyConsistent)
            sleeping = false
        }
    }

    /// Wakes the job's thread from `idle` (new work arrived); one atomic load when it is not idle.
    public func wake() {
        guard idling.load(ordering: .sequentiallyConsistent) else { return }
        lock.lock()
        lock.broadcast()
        lock.unlock()
    }

    /// Applies an error policy to a failed request of the job. Returns normally when the job
    /// should retry the request (`stop`: after the job was paused and resumed), throws the job's
    /// failure for `report` (and `enospc` on other errors); returns false for `ignore`.
    public func handleError(_ error: BlockError, write: Bool, policy: JobErrorPolicy) throws(JobError) -> Bool {
        let noSpace = error.errno == ENOSPC
        let action: JobErrorAction
        switch policy {
        case .ignore: action = .ignore
        case .report: action = .report
        case .stop: action = .stop
        case .enospc: action = noSpace ? .stop : .report
        }
        return try locked { () throws(JobError) -> Bool in
            emit(.ioError(write: write, action: action))
            switch action {
            case .ignore:
                return false
            case .report:
                throw JobError(error.message)
            case .stop:
                io = noSpace ? .nospace : .failed
                userPaused = true
                pauseLocked()
                if hardCancel { throw JobError(error.message) }
                return true
            }
        }
    }

    // MARK: - Internals

    private func transition(_ next: JobStatus) {
        assert(state.allows(next) || state == next, "job \(id): \(state) -> \(next)")
        guard state != next else { return }
        state = next
        emit(.statusChanged(next))
    }

    private func emit(_ event: JobEvent) {
        events(snapshotLocked(), event)
    }

    /// Runs a driver step with the lock released (the driver may ask the job about itself).
    private func unlocked<E: Error>(_ body: () throws(E) -> Void) throws(E) {
        lock.unlock()
        defer { lock.lock() }
        try body()
    }

    private func locked<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    /// Monotonic nanoseconds.
    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}
