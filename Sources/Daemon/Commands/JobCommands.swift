import BlockCore
import LogOptionsClock
import Jobs
import QAPI

extension JobError {
    /// The failure as QMP reports it: GenericError with the same text.
    var qmp: QAPIError { .generic(message) }
}

extension Daemon {
    /// `query-block-jobs`, `query-jobs`, `block-job-*` and `job-*`.
    func registerJobCommands(on table: QMPCommandTable) {
        table.register(QueryBlockJobsCommand.self) { [unowned self] _ throws(QAPIError) in queryBlockJobs() }
        table.register(QueryJobsCommand.self) { [unowned self] _ throws(QAPIError) in queryJobs() }
        table.register(BlockJobSetSpeedCommand.self) { [unowned self] arguments throws(QAPIError) in try blockJobSetSpeed(arguments) }
        table.register(BlockJobCancelCommand.self) { [unowned self] arguments throws(QAPIError) in try blockJobCancel(arguments) }
        table.register(BlockJobPauseCommand.self) { [unowned self] arguments throws(QAPIError) in try blockJobPause(arguments) }
        table.register(BlockJobResumeCommand.self) { [unowned self] arguments throws(QAPIError) in try blockJobResume(arguments) }
        table.register(BlockJobCompleteCommand.self) { [unowned self] arguments throws(QAPIError) in try blockJobComplete(arguments) }
        table.register(BlockJobFinalizeCommand.self) { [unowned self] arguments throws(QAPIError) in try blockJobFinalize(arguments) }
        table.register(BlockJobDismissCommand.self) { [unowned self] arguments throws(QAPIError) in try blockJobDismiss(arguments) }
        table.register(JobPauseCommand.self) { [unowned self] arguments throws(QAPIError) in try jobPause(arguments) }
        table.register(JobResumeCommand.self) { [unowned self] arguments throws(QAPIError) in try jobResume(arguments) }
        table.register(JobCancelCommand.self) { [unowned self] arguments throws(QAPIError) in try jobCancel(arguments) }
        table.register(JobCompleteCommand.self) { [unowned self] arguments throws(QAPIError) in try jobComplete(arguments) }
        table.register(JobFinalizeCommand.self) { [unowned self] arguments throws(QAPIError) in try jobFinalize(arguments) }
        table.register(JobDismissCommand.self) { [unowned self] arguments throws(QAPIError) in try jobDismiss(arguments) }
    }

    /// `query-block-jobs`: every block job, as QEMU 7 lists them (with status and auto-* members).
    func queryBlockJobs() -> [BlockJobInfo] {
        jobs.all.filter { $0.kind != .create }.map { job in
            let state = job.snapshot
            return BlockJobInfo(
                type: state.kind.rawValue, device: state.id, len: Int64(clamping: state.total), offset: Int64(clamping: state.current),
                busy: state.busy, paused: state.paused, speed: Int64(clamping: state.speed),
                ioStatus: BlockDeviceIoStatus(rawValue: state.ioStatus.rawValue) ?? .ok, ready: state.ready,
                status: QAPI.JobStatus(rawValue: state.status.rawValue), autoFinalize: state.autoFinalize,
                autoDismiss: state.autoDismiss, error: state.error)
        }
    }

    /// `query-jobs`.
    func queryJobs() -> [JobInfo] {
        jobs.all.map { job in
            let state = job.snapshot
            return JobInfo(
                id: state.id, type: JobType(rawValue: state.kind.rawValue) ?? .mirror,
                status: QAPI.JobStatus(rawValue: state.status.rawValue) ?? .undefined,
                currentProgress: Int64(clamping: state.current), totalProgress: Int64(clamping: state.total), error: state.error)
        }
    }

    /// The job a block-job-* command names, or DeviceNotActive as QEMU words it.
    func blockJob(_ id: String) throws(QAPIError) -> Job {
        guard let job = jobs.job(id) else { throw QAPIError(.deviceNotActive, "Block job '\(id)' not found") }
        return job
    }

    /// The job a job-* command names.
    func anyJob(_ id: String) throws(QAPIError) -> Job {
        guard let job = jobs.job(id) else { throw .generic("Job not found") }
        return job
    }

    /// `block-job-set-speed`.
    func blockJobSetSpeed(_ arguments: BlockJobSetSpeedArguments) throws(QAPIError) -> QAPIEmpty {
        let job = try blockJob(arguments.device)
        guard arguments.speed >= 0 else { throw .generic("Parameter 'speed' expects a non-negative value") }
        return try verb { () throws(JobError) in try job.setSpeed(UInt64(arguments.speed)) }
    }

    /// `block-job-cancel`.
    func blockJobCancel(_ arguments: BlockJobCancelArguments) throws(QAPIError) -> QAPIEmpty {
        let job = try blockJob(arguments.device)
        return try verb { () throws(JobError) in try job.cancel(force: arguments.force ?? false) }
    }

    /// `block-job-pause`.
    func blockJobPause(_ arguments: BlockJobPauseArguments) throws(QAPIError) -> QAPIEmpty {
        let job = try blockJob(arguments.device)
        return try verb { () throws(JobError) in try job.pause() }
    }

    /// `block-job-resume`.
    func blockJobResume(_ arguments: BlockJobResumeArguments) throws(QAPIError) -> QAPIEmpty {
        let job = try blockJob(arguments.device)
        return try verb { () throws(JobError) in try job.resume() }
    }

    /// `block-job-complete`.
    func blockJobComplete(_ arguments: BlockJobCompleteArguments) throws(QAPIError) -> QAPIEmpty {
        let job = try blockJob(arguments.device)
        return try verb { () throws(JobError) in try job.complete() }
    }

    /// `block-job-finalize`.
    func blockJobFinalize(_ arguments: BlockJobFinalizeArguments) throws(QAPIError) -> QAPIEmpty {
        let job = try blockJob(arguments.id)
        return try verb { () throws(JobError) in try job.finalize() }
    }

    /// `block-job-dismiss`.
    func blockJobDismiss(_ arguments: BlockJobDismissArguments) throws(QAPIError) -> QAPIEmpty {
        let job = try blockJob(arguments.id)
        return try verb { () throws(JobError) in try job.dismiss() }
    }

    /// `job-pause`.
    func jobPause(_ arguments: JobPauseArguments) throws(QAPIError) -> QAPIEmpty {
        let job = try anyJob(arguments.id)
        return try verb { () throws(JobError) in try job.pause() }
    }

    /// `job-resume`.
    func jobResume(_ arguments: JobResumeArguments) throws(QAPIError) -> QAPIEmpty {
        let job = try anyJob(arguments.id)
        return try verb { () throws(JobError) in try job.resume() }
    }

    /// `job-cancel`: always a hard cancel (a ready mirror does not complete).
    func jobCancel(_ arguments: JobCancelArguments) throws(QAPIError) -> QAPIEmpty {
        let job = try anyJob(arguments.id)
        return try verb { () throws(JobError) in try job.cancel(force: true) }
    }

    /// `job-complete`.
    func jobComplete(_ arguments: JobCompleteArguments) throws(QAPIError) -> QAPIEmpty {
        let job = try anyJob(arguments.id)
        return try verb { () throws(JobError) in try job.complete() }
    }

    /// `job-finalize`.
    func jobFinalize(_ arguments: JobFinalizeArguments) throws(QAPIError) -> QAPIEmpty {
        let job = try anyJob(arguments.id)
        return try verb { () throws(JobError) in try job.finalize() }
    }

    /// `job-dismiss`.
    func jobDismiss(_ arguments: JobDismissArguments) throws(QAPIError) -> QAPIEmpty {
        let job = try anyJob(arguments.id)
        return try verb { () throws(JobError) in try job.dismiss() }
    }

    private func verb(_ body: () throws(JobError) -> Void) throws(QAPIError) -> QAPIEmpty {
        do {
            try body()
        } catch {
            throw error.qmp
        }
        return QAPIEmpty()
    }

    // MARK: - Starting jobs

    /// The common arguments of the commands that start a job.
    struct JobStart {
        var id: String?
        var device: String
        var speed: Int64?
        var autoFinalize: Bool?
        var autoDismiss: Bool?
    }

    /// Checks a new job's id and speed, with QEMU's wording, and returns the id (the device name
    /// when none is given).
    func checkJobStart(_ start: JobStart) throws(QAPIError) -> String {
        let id = start.id ?? (devices[start.device] != nil ? start.device : "")
        guard Job.isValidID(id) else { throw .generic("Invalid job ID '\(id)'") }
        if jobs.job(id) != nil { throw .generic("Job ID '\(id)' already in use") }
        if let speed = start.speed, speed < 0 { throw .generic("Parameter 'speed' expects a non-negative value") }
        return id
    }

    /// Refuses a node a running job uses (as source or target), with QEMU's op-blocker wording.
    func checkNotBusy(_ nodes: [BlockNode]) throws(QAPIError) {
        for node in nodes {
            for job in jobs.all where !job.status.isFinished {
                if let user = job.driver as? any NodeUser, user.uses(node) {
                    throw .generic("Node '\(node.name)' is busy: block device is in use by block job: \(job.kind.rawValue)")
                }
            }
        }
    }

    /// Creates, registers and starts a job whose events go to the monitor.
    func startJob(id: String, driver: any JobDriver, start: JobStart) throws(QAPIError) -> Job {
        let job = Job(
            id: id, driver: driver, speed: UInt64(max(0, start.speed ?? 0)), autoFinalize: start.autoFinalize ?? true,
            autoDismiss: start.autoDismiss ?? true,
            events: { [weak self] state, event in self?.emitJobEvent(state, event) },
            removed: { [weak self] job in self?.jobs.remove(job) })
        do {
            try jobs.add(job)
        } catch {
            throw error.qmp
        }
        job.start()
        Log.info("job '\(id)' (\(driver.kind.rawValue)) started")
        return job
    }

    /// Turns a job's report into its QMP event.
    func emitJobEvent(_ state: JobSnapshot, _ event: JobEvent) {
        guard let monitor else { return }
        // A create job is not a block job: QEMU sends it JOB_STATUS_CHANGE only.
        if state.kind == .create, case .statusChanged = event {} else if state.kind == .create { return }
        let type = BlockJobType(rawValue: state.kind.rawValue) ?? .mirror
        let len = Int64(clamping: state.total), offset = Int64(clamping: state.current), speed = Int64(clamping: state.speed)
        switch event {
        case .statusChanged(let status):
            monitor.emit(JobStatusChangeEvent(id: state.id, status: QAPI.JobStatus(rawValue: status.rawValue) ?? .undefined))
        case .ready:
            monitor.emit(BlockJobReadyEvent(type: type, device: state.id, len: len, offset: offset, speed: speed))
        case .completed(let error):
            monitor.emit(BlockJobCompletedEvent(type: type, device: state.id, len: len, offset: offset, speed: speed, error: error))
        case .cancelled:
            monitor.emit(BlockJobCancelledEvent(type: type, device: state.id, len: len, offset: offset, speed: speed))
        case .pending:
            monitor.emit(BlockJobPendingEvent(type: JobType(rawValue: state.kind.rawValue) ?? .mirror, id: state.id))
        case .ioError(let write, let action):
            monitor.emit(BlockJobErrorEvent(
                device: state.id, operation: write ? .write : .read, action: BlockErrorAction(rawValue: action.rawValue) ?? .report))
        }
    }

    /// Every device (named, and the anonymous ones of exports), for a job's pivot.
    func allBackends() -> [BlockBackend] {
        controlLock.withLock { _ in Array(devices.values) + server.exports.all.map(\.backend) }
    }

    /// The node a job's `device` or `target` names: a device's medium or a node name, or QEMU's
    /// "Cannot find device=... nor node-name=..." error.
    func jobNode(_ name: String) throws(QAPIError) -> BlockNode {
        if let device = devices[name], let medium = device.medium { return medium }
        if let node = graph.node(named: name) { return node }
        throw .generic("Cannot find device='\(name)' nor node-name='\(name)'")
    }
}
