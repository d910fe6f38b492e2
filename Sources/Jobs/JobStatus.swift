/// Where a job is in its life: QEMU's `JobStatus`, with its transition table (job.c `JobSTT`).
public enum JobStatus: String, Sendable, CaseIterable {
    case undefined, created, running, paused, ready, standby, waiting, pending, aborting, concluded, null

    /// Whether a job may go from this status to `next`.
    public func allows(_ next: JobStatus) -> Bool {
        switch (self, next) {
        case (.undefined, .created): return true
        case (.created, .running), (.created, .aborting), (.created, .null): return true
        case (.running, .paused), (.running, .ready), (.running, .waiting), (.running, .aborting): return true
        case (.paused, .running): return true
        case (.ready, .standby), (.ready, .waiting), (.ready, .aborting): return true
        case (.standby, .ready): return true
        case (.waiting, .pending), (.waiting, .aborting): return true
        case (.pending, .aborting), (.pending, .concluded): return true
        case (.aborting, .aborting), (.aborting, .concluded): return true
        case (.concluded, .null): return true
        default: return false
        }
    }

    /// Whether the job has finished its work (successfully or not) and only waits to be removed.
    public var isFinished: Bool { self == .concluded || self == .null }
}

/// A command acting on a job, with the statuses that accept it (job.c `JobVerbTable`).
public enum JobVerb: String, Sendable {
    case cancel, pause, resume, setSpeed = "set-speed", complete, finalize, dismiss

    /// Whether a job in `status` accepts this verb.
    public func allowed(in status: JobStatus) -> Bool {
        switch self {
        case .cancel, .pause, .resume, .setSpeed:
            return [.created, .running, .paused, .ready, .standby, .waiting, .pending].contains(status)
        case .complete: return status == .ready
        case .finalize: return status == .pending
        case .dismiss: return status == .concluded
        }
    }
}

/// The kind of a block job (QEMU's `BlockJobType` / `JobType` names).
public enum JobKind: String, Sendable {
    case commit, stream, mirror, backup, create
}

/// What a job does when one of its own requests fails (`BlockdevOnError`).
public enum JobErrorPolicy: String, Sendable {
    /// Fail the job.
    case report
    /// Go on as if the request had succeeded.
    case ignore
    /// Pause the job on ENOSPC, fail it otherwise.
    case enospc
    /// Pause the job; resuming retries the request.
    case stop
}
