#if canImport(Glibc)
import Glibc
#endif
import JSON

/// How a followed job ended.
public enum JobOutcome: Sendable, Equatable {
    /// BLOCK_JOB_COMPLETED without an error.
    case completed
    /// BLOCK_JOB_COMPLETED with this error.
    case failed(String)
    /// BLOCK_JOB_CANCELLED.
    case cancelled
    /// The job went away without a final event this connection saw.
    case vanished

    /// The exit code `blockctl job-wait` ends with: 0 only for a job that completed.
    public var exitCode: Int32 {
        switch self {
        case .completed: return 0
        case .failed, .cancelled: return 1
        case .vanished: return 3
        }
    }
}

/// Follows one job over a QMP connection until it ends: samples its progress (query-block-jobs)
/// between events and reports both through `show`; returns the job's outcome.
public struct JobFollower {
    /// The job followed.
    public let id: String
    /// Seconds between progress samples.
    public var interval: Double = 0.5

    /// Follows job `id`.
    public init(id: String) { self.id = id }

    /// What the follower reports: a progress sample, or an event of the job.
    public enum Report {
        /// New progress figures.
        case progress(JobProgress)
        /// An event naming the job (READY, ERROR, PENDING, the final one, a status change).
        case event(JSONValue)
    }

    /// Runs until the job ends; fails when the job does not exist to begin with.
    public func run(on connection: QMPConnection, show: (Report) -> Void) throws(QMPClientError) -> JobOutcome {
        var progress = JobProgress(id: id)
        guard try sample(connection, into: &progress) else {
            // It may have ended just now, with its final event already received.
            if let outcome = try drainEvents(connection, show: show) { return outcome }
            throw QMPClientError("no job '\(id)' (query-block-jobs does not list it)")
        }
        show(.progress(progress))
        var nextSample = JobFollower.now() + interval
        while true {
            let wait = max(0, nextSample - JobFollower.now())
            if let event = try connection.nextEvent(timeout: wait) {
                if let outcome = handle(event, progress: &progress, show: show) { return outcome }
                continue
            }
            nextSample = JobFollower.now() + interval
            guard try sample(connection, into: &progress) else {
                if let outcome = try drainEvents(connection, show: show) { return outcome }
                return .vanished
            }
            show(.progress(progress))
        }
    }

    /// Handles the events already received; the outcome when one of them ended the job.
    private func drainEvents(_ connection: QMPConnection, show: (Report) -> Void) throws(QMPClientError) -> JobOutcome? {
        var progress = JobProgress(id: id)
        while let event = try connection.nextEvent(timeout: 0.2) {
            if let outcome = handle(event, progress: &progress, show: show) { return outcome }
        }
        return nil
    }

    /// Reports an event of the job; the outcome when it is the job's last.
    private func handle(_ event: JSONValue, progress: inout JobProgress, show: (Report) -> Void) -> JobOutcome? {
        guard case .string(let name)? = event["event"] else { return nil }
        let data = event["data"]
        let subject = data?["device"] ?? data?["id"]
        guard subject == .string(id) else { return nil }
        if name == "JOB_STATUS_CHANGE" {
            if case .string(let status)? = data?["status"] { progress.status = status }
            return nil
        }
        if case .integer(let offset)? = data?["offset"], case .integer(let length)? = data?["len"] {
            progress.sample(offset: offset, length: length, at: JobFollower.now())
        }
        show(.event(event))
        switch name {
        case "BLOCK_JOB_COMPLETED":
            if case .string(let error)? = data?["error"] { return .failed(error) }
            return .completed
        case "BLOCK_JOB_CANCELLED":
            return .cancelled
        default:
            return nil
        }
    }

    /// Reads the job's figures from query-block-jobs; false when it is not listed.
    private func sample(_ connection: QMPConnection, into progress: inout JobProgress) throws(QMPClientError) -> Bool {
        let reply = try connection.execute("query-block-jobs", arguments: nil)
        guard case .array(let jobs)? = reply["return"] else {
            throw QMPClientError("query-block-jobs failed: \(reply.serialized())")
        }
        guard let job = jobs.first(where: { $0["device"] == .string(id) }) else { return false }
        if case .string(let type)? = job["type"] { progress.type = type }
        if case .string(let status)? = job["status"] { progress.status = status }
        if case .integer(let offset)? = job["offset"], case .integer(let length)? = job["len"] {
            progress.sample(offset: offset, length: length, at: JobFollower.now())
        }
        return true
    }

    /// Monotonic seconds.
    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
