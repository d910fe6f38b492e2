import QMP
import XCTest

/// The per-client outbox: order kept, events bounded, replies never refused, closing ends the writer.
/// Single-threaded: every call here returns at once (nothing waits, nothing is timed).
final class MonitorOutboxTests: XCTestCase {
    private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

    /// An outbox that takes events, with nothing queued.
    private func negotiated(eventLimit: Int, replyBacklog: Int) -> MonitorOutbox {
        let outbox = MonitorOutbox(eventLimit: eventLimit, replyBacklog: replyBacklog)
        XCTAssertTrue(outbox.post(reply: [], acceptingEvents: true))
        outbox.written(outbox.nextBatch()!)
        return outbox
    }

    func testRepliesAndEventsComeOutInTheOrderPosted() {
        let outbox = MonitorOutbox(eventLimit: 100, replyBacklog: 50)
        XCTAssertTrue(outbox.post(reply: bytes("greeting")))
        XCTAssertEqual(outbox.post(event: bytes("early")), .notAccepting, "before negotiation")
        XCTAssertTrue(outbox.post(reply: bytes("negotiated"), acceptingEvents: true))
        XCTAssertEqual(outbox.post(event: bytes("event-1")), .queued)
        XCTAssertTrue(outbox.post(reply: bytes("reply")))
        XCTAssertEqual(outbox.post(event: bytes("event-2")), .queued)
        let batch = outbox.nextBatch()
        XCTAssertEqual(batch?.map { String(decoding: $0.bytes, as: UTF8.self) }, ["greeting", "negotiated", "event-1", "reply", "event-2"])
        XCTAssertEqual(batch?.map(\.isEvent), [false, false, true, false, true])
        XCTAssertEqual(outbox.backlog, 37, "taken but not yet written still counts")
        outbox.written(batch!)
        XCTAssertEqual(outbox.backlog, 0)
        XCTAssertTrue(outbox.waitUntilWritten(deadline: 0))
    }

    func testUnreadEventsPastTheLimitCloseTheOutbox() {
        let outbox = negotiated(eventLimit: 30, replyBacklog: 1000)
        XCTAssertEqual(outbox.post(event: [UInt8](repeating: 1, count: 20)), .queued)
        XCTAssertEqual(outbox.post(event: [UInt8](repeating: 2, count: 10)), .queued, "exactly at the limit")
        // Being written still counts: the writer may be stuck on a client that does not read.
        let batch = outbox.nextBatch()
        XCTAssertEqual(batch?.count, 2)
        XCTAssertEqual(outbox.post(event: [3]), .overflowed)
        XCTAssertTrue(outbox.isClosed)
        XCTAssertEqual(outbox.post(event: [4]), .closed)
        XCTAssertFalse(outbox.post(reply: [5]))
        XCTAssertNil(outbox.nextBatch(), "the writer stops")
        XCTAssertFalse(outbox.waitForRoom())
    }

    func testRepliesAreNeverRefusedButCountTowardsTheBacklog() {
        let outbox = negotiated(eventLimit: 10, replyBacklog: 10)
        XCTAssertTrue(outbox.post(reply: [UInt8](repeating: 0, count: 1000)), "a big reply is queued whole")
        XCTAssertEqual(outbox.backlog, 1000)
        // Replies do not use up the event allowance.
        XCTAssertEqual(outbox.post(event: [UInt8](repeating: 0, count: 10)), .queued)
        let batch = outbox.nextBatch()!
        outbox.written(batch)
        XCTAssertTrue(outbox.waitForRoom(), "room again once written")
        XCTAssertEqual(outbox.post(event: [UInt8](repeating: 0, count: 10)), .queued, "written events free their allowance")
    }

    func testClosingStopsTheWriterAndWaiters() {
        let outbox = MonitorOutbox()
        XCTAssertTrue(outbox.post(reply: [1]))
        outbox.close()
        XCTAssertNil(outbox.nextBatch())
        XCTAssertFalse(outbox.waitForRoom())
        XCTAssertFalse(outbox.waitUntilWritten(deadline: UInt64.max), "closed with a reply unwritten")
        outbox.writerFinished()
        outbox.waitForWriter()
    }
}
