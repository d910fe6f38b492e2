import XCTest
import QMPClient

final class JobProgressTests: XCTestCase {
    func testRateAndTimeLeftFromSamples() {
        var progress = JobProgress(id: "m1")
        progress.type = "mirror"
        progress.status = "running"
        progress.sample(offset: 0, length: 100 << 20, at: 10)
        XCTAssertNil(progress.rate)
        XCTAssertNil(progress.secondsLeft)
        progress.sample(offset: 25 << 20, length: 100 << 20, at: 11)
        XCTAssertEqual(progress.rate ?? 0, Double(25 << 20), accuracy: 1)
        XCTAssertEqual(progress.secondsLeft ?? 0, 3, accuracy: 0.001)
        XCTAssertEqual(progress.percent, 25)
        XCTAssertEqual(progress.line, "m1: mirror running 25.0% 25.0 MiB/100.0 MiB 25.0 MiB/s ETA 0:03")
        XCTAssertEqual(progress.bar(width: 8), "m1 [##......] 25.0% running 25.0 MiB/100.0 MiB 25.0 MiB/s ETA 0:03")
    }

    func testFormats() {
        XCTAssertEqual(JobProgress.bytes(512), "512 B")
        XCTAssertEqual(JobProgress.bytes(1536), "1.5 KiB")
        XCTAssertEqual(JobProgress.bytes(3 << 30), "3.0 GiB")
        XCTAssertEqual(JobProgress.clock(59.2), "1:00")
        XCTAssertEqual(JobProgress.clock(3725), "1:02:05")
    }

    func testEmptyJobIsDoneWhenReady() {
        var progress = JobProgress(id: "m1")
        progress.status = "ready"
        progress.sample(offset: 0, length: 0, at: 1)
        XCTAssertEqual(progress.percent, 100)
    }
}
