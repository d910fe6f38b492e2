import Synchronization

/// The jobs that exist (until they reach `null`), by id, in the order they were created.
public final class JobRegistry: Sendable {
    private let jobs = Mutex<[Job]>([])

    /// Creates an empty registry.
    public init() {}

    /// Every job, oldest first.
    public var all: [Job] { jobs.withLock { $0 } }

    /// The job with that id.
    public func job(_ id: String) -> Job? { jobs.withLock { list in list.first { $0.id == id } } }

    /// Adds a job; refused (QEMU's wording) when the id is taken.
    public func add(_ job: Job) throws(JobError) {
        let added = jobs.withLock { list -> Bool in
            guard !list.contains(where: { $0.id == job.id }) else { return false }
            list.append(job)
            return true
        }
        guard added else { throw JobError("Job ID '\(job.id)' already in use") }
    }

    /// Takes a job out (it reached `null`).
    public func remove(_ job: Job) {
        jobs.withLock { list in list.removeAll { $0 === job } }
    }
}
