import BlockCore

/// Why a job failed, as BLOCK_JOB_COMPLETED's `error` says it.
public struct JobError: Error, Sendable, Equatable {
    /// The message for people.
    public var message: String
    /// A failure with this message.
    public init(_ message: String) { self.message = message }
}

/// What a kind of job does; the `Job` runs it through QEMU's life cycle (job.c): `run` on the
/// job's thread, then `commit` (success, at finalize) or `abort` (failure or cancel), then `clean`.
public protocol JobDriver: AnyObject, Sendable {
    /// The kind of job.
    var kind: JobKind { get }
    /// Whether `complete` applies: the job reaches `ready` and waits for it (mirror, active commit).
    var completable: Bool { get }
    /// The bulk of the work, on the job's own thread: copies in chunks, calling the job's pause
    /// points, speed limit and progress. Returns when done (or cancelled); throws when it failed.
    func run(_ job: Job) throws(JobError)
    /// The graph changes of a job that succeeded (a pivot); a failure here fails the job.
    func commit(_ job: Job) throws(JobError)
    /// Undoes what `run` left in the graph, after a failure or a cancel.
    func abort(_ job: Job)
    /// Releases what the job held, after `commit` or `abort`.
    func clean(_ job: Job)
}

extension JobDriver {
    /// Default: not completable.
    public var completable: Bool { false }
    /// Default: nothing to change.
    public func commit(_ job: Job) throws(JobError) {}
    /// Default: nothing to undo.
    public func abort(_ job: Job) {}
    /// Default: nothing to release.
    public func clean(_ job: Job) {}
}

/// Something a job reports, as the monitor turns it into events.
public enum JobEvent: Sendable, Equatable {
    /// The status changed (`JOB_STATUS_CHANGE`).
    case statusChanged(JobStatus)
    /// The job is ready to be completed (`BLOCK_JOB_READY`).
    case ready
    /// The job ended; `error` when it failed (`BLOCK_JOB_COMPLETED`).
    case completed(error: String?)
    /// The job was cancelled (`BLOCK_JOB_CANCELLED`).
    case cancelled
    /// The job waits for job-finalize (`BLOCK_JOB_PENDING`).
    case pending
    /// One of the job's requests failed and the policy chose `action` (`BLOCK_JOB_ERROR`).
    case ioError(write: Bool, action: JobErrorAction)
}

/// What a job did about a failed request (`BlockErrorAction`).
public enum JobErrorAction: String, Sendable {
    case ignore, report, stop
}

/// The I/O status of a job's own requests (`BlockDeviceIoStatus`).
public enum JobIOStatus: String, Sendable {
    case ok, failed, nospace
}

/// A job's state at one moment, as queries and events show it.
public struct JobSnapshot: Sendable {
    public var id: String
    public var kind: JobKind
    public var status: JobStatus
    public var current: UInt64
    public var total: UInt64
    public var speed: UInt64
    public var busy: Bool
    public var paused: Bool
    public var ready: Bool
    public var ioStatus: JobIOStatus
    public var autoFinalize: Bool
    public var autoDismiss: Bool
    public var error: String?
}

/// A job that holds nodes (its source and target): a second job on them is refused.
public protocol NodeUser {
    /// Whether the job reads or writes `node`.
    func uses(_ node: BlockNode) -> Bool
}

extension MirrorJob: NodeUser {
    public func uses(_ node: BlockNode) -> Bool { node === source || node === target || node === filterNode }
}

extension BackupJob: NodeUser {
    public func uses(_ node: BlockNode) -> Bool { node === source || node === target }
}
