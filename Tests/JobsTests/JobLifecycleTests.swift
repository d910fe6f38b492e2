import BlockCore
import Synchronization
import XCTest

@testable import Jobs

/// A driver that counts down `steps` chunks, each a pause point; completable ones wait for complete.
private final class CountingDriver: JobDriver, @unchecked Sendable {
    let kind = JobKind.backup
    let completable: Bool
    let steps: Int
    let fail: Bool
    let committed = Mutex(false)
    let aborted = Mutex(false)

    init(steps: Int, completable: Bool = false, fail: Bool = false) {
        self.steps = steps
        self.completable = completable
        self.fail = fail
    }

    func run(_ job: Job) throws(JobError) {
        job.progress(current: 0, total: UInt64(steps))
        for step in 0..<steps {
            guard job.pausePoint() else { return }
            job.progress(current: UInt64(step + 1), total: UInt64(steps))
            job.throttle(1)
        }
        if fail { throw JobError("boom") }
        guard completable else { return }
        while job.pausePoint() {
            job.setReady()
            if job.finishRequested { return }
            job.idle(10_000_000)
        }
    }

    func commit(_ job: Job) throws(JobError) { committed.withLock { $0 = true } }
    func abort(_ job: Job) { aborted.withLock { $0 = true } }
}

/// Collects a job's events.
private final class Recorder: Sendable {
    let events = Mutex<[String]>([])

    func record(_ state: JobSnapshot, _ event: JobEvent) {
        let label: String
        switch event {
        case .statusChanged(let status): label = status.rawValue
        case .ready: label = "READY"
        case .completed(let error): label = error == nil ? "COMPLETED" : "COMPLETED:\(error!)"
        case .cancelled: label = "CANCELLED"
        case .pending: label = "PENDING"
        case .ioError: label = "ERROR"
        }
        events.withLock { $0.append(label) }
    }

    var list: [String] { events.withLock { $0 } }

    func wait(for label: String, times: Int = 1, file: StaticString = #filePath, line: UInt = #line) {
        let deadline = Date().addingTimeInterval(5)
        func seen() -> Int { list.filter { $0 == label }.count }
        while seen() < times && Date() < deadline { usleep(2000) }
        XCTAssertGreaterThanOrEqual(seen(), times, "no \(label) in \(list)", file: file, line: line)
    }
}

final class JobLifecycleTests: XCTestCase {
    private func makeJob(_ driver: CountingDriver, _ recorder: Recorder, autoFinalize: Bool = true, autoDismiss: Bool = true) -> Job {
        Job(id: "j1", driver: driver, autoFinalize: autoFinalize, autoDismiss: autoDismiss,
            events: { recorder.record($0, $1) }, removed: { _ in })
    }

    func testSuccessfulJobGoesThroughQEMUStates() {
        let recorder = Recorder()
        let driver = CountingDriver(steps: 3)
        makeJob(driver, recorder).start()
        recorder.wait(for: "null")
        XCTAssertEqual(recorder.list, ["created", "running", "waiting", "pending", "COMPLETED", "concluded", "null"])
        XCTAssertTrue(driver.committed.withLock { $0 })
    }

    func testFailureAborts() {
        let recorder = Recorder()
        let driver = CountingDriver(steps: 1, fail: true)
        makeJob(driver, recorder).start()
        recorder.wait(for: "null")
        XCTAssertEqual(recorder.list, ["created", "running", "aborting", "COMPLETED:boom", "concluded", "null"])
        XCTAssertTrue(driver.aborted.withLock { $0 })
    }

    func testReadyPauseCompleteAndVerbChecks() throws {
        let recorder = Recorder()
        let job = makeJob(CountingDriver(steps: 1, completable: true), recorder)
        XCTAssertThrowsError(try job.complete())
        job.start()
        recorder.wait(for: "READY")
        try job.pause()
        recorder.wait(for: "standby")
        XCTAssertThrowsError(try job.pause()) { XCTAssertEqual(($0 as? JobError)?.message, "Job is already paused") }
        try job.resume()
        XCTAssertThrowsError(try job.resume()) {
            XCTAssertEqual(($0 as? JobError)?.message, "Can't resume a job that was not paused")
        }
        // Until the job's thread is back, it is in standby, where complete is refused as in QEMU.
        recorder.wait(for: "ready", times: 2)
        try job.complete()
        recorder.wait(for: "null")
        XCTAssertEqual(recorder.list, [
            "created", "running", "ready", "READY", "standby", "ready", "waiting", "pending", "COMPLETED", "concluded", "null",
        ])
    }

    func testSoftAndHardCancelOfAReadyJob() throws {
        let soft = Recorder()
        let softDriver = CountingDriver(steps: 1, completable: true)
        let softJob = makeJob(softDriver, soft)
        softJob.start()
        soft.wait(for: "READY")
        try softJob.cancel(force: false)
        soft.wait(for: "null")
        XCTAssertEqual(soft.list.suffix(5), ["waiting", "pending", "COMPLETED", "concluded", "null"])
        XCTAssertTrue(softJob.isSoftCancelled)

        let hard = Recorder()
        let hardJob = makeJob(CountingDriver(steps: 1, completable: true), hard)
        hardJob.start()
        hard.wait(for: "READY")
        try hardJob.cancel(force: true)
        hard.wait(for: "null")
        XCTAssertEqual(hard.list.suffix(4), ["aborting", "CANCELLED", "concluded", "null"])
    }

    func testManualFinalizeAndDismiss() throws {
        let recorder = Recorder()
        let job = makeJob(CountingDriver(steps: 2), recorder, autoFinalize: false, autoDismiss: false)
        job.start()
        recorder.wait(for: "PENDING")
        XCTAssertThrowsError(try job.dismiss()) {
            XCTAssertEqual(($0 as? JobError)?.message, "Job 'j1' in state 'pending' cannot accept command verb 'dismiss'")
        }
        try job.finalize()
        XCTAssertEqual(job.status, .concluded)
        try job.dismiss()
        XCTAssertEqual(recorder.list, ["created", "running", "waiting", "pending", "PENDING", "COMPLETED", "concluded", "null"])
    }

    func testSpeedLimitPaces() {
        let recorder = Recorder()
        // 20 steps of 1 byte at 100 bytes/s: at least 0.1 s (beyond the burst credit).
        let job = Job(id: "j2", driver: CountingDriver(steps: 20), speed: 100, events: { recorder.record($0, $1) }, removed: { _ in })
        let start = Date()
        job.start()
        recorder.wait(for: "null")
        XCTAssertGreaterThan(Date().timeIntervalSince(start), 0.08)
    }
}
