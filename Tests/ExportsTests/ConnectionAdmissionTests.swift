import Exports
import XCTest

/// Fair admission: free slots for anyone; when full, the peer holding the most gives up its newest
/// connection to a peer holding fewer, down to the protected few; never to itself.
final class ConnectionAdmissionTests: XCTestCase {
    private typealias Slot = ConnectionAdmission.Slot

    /// `counts` connections per peer, numbered in order, attached unless listed in `handshaking`.
    private func live(_ counts: [(String, Int)], handshaking: Set<Int> = []) -> [Int: Slot] {
        var slots: [Int: Slot] = [:]
        var id = 0
        for (peer, count) in counts {
            for _ in 0..<count {
                slots[id] = Slot(peer: peer, attached: !handshaking.contains(id), sequence: UInt64(id))
                id += 1
            }
        }
        return slots
    }

    func testFreeSlotsAdmitAnyone() {
        let admission = ConnectionAdmission(maxConnections: 4, protectedPerPeer: 1)
        XCTAssertEqual(admission.decide(peer: "a", live: live([("a", 3)])), .admit)
        XCTAssertEqual(admission.decide(peer: "b", live: [Int: Slot]()), .admit)
    }

    func testAFullServerTakesTheHogsNewestConnectionForAnotherPeer() {
        let admission = ConnectionAdmission(maxConnections: 100)
        XCTAssertEqual(admission.decide(peer: "good", live: live([("hog", 100)])), .admitClosing(99))
        // Connections still in the handshake go first, newest first.
        XCTAssertEqual(admission.decide(peer: "good", live: live([("hog", 100)], handshaking: [10, 20])), .admitClosing(20))
        // The peer holding the most pays, not a smaller one.
        XCTAssertEqual(admission.decide(peer: "new", live: live([("small", 30), ("hog", 70)])), .admitClosing(99))
    }

    func testTheHogItselfIsRefused() {
        let admission = ConnectionAdmission(maxConnections: 100)
        XCTAssertEqual(admission.decide(peer: "hog", live: live([("hog", 100)])), .refuse)
        XCTAssertEqual(admission.decide(peer: "hog", live: live([("hog", 84), ("good", 16)])), .refuse)
    }

    func testProtectedConnectionsAreNeverTaken() {
        let admission = ConnectionAdmission(maxConnections: 32, protectedPerPeer: 16)
        XCTAssertEqual(admission.decide(peer: "c", live: live([("a", 16), ("b", 16)])), .refuse)
        XCTAssertEqual(admission.decide(peer: "c", live: live([("a", 15), ("b", 17)])), .admitClosing(31))
        // QEMU's behaviour for small limits: max-connections=2 held by one client refuses a third.
        XCTAssertEqual(ConnectionAdmission(maxConnections: 2).decide(peer: "b", live: live([("a", 2)])), .refuse)
    }

    func testSharesEvenOutButDoNotSwapBackAndForth() {
        let admission = ConnectionAdmission(maxConnections: 40, protectedPerPeer: 1)
        // b holds 19, a 21: taking one of a's would leave a 20, b 20: fair.
        XCTAssertEqual(admission.decide(peer: "b", live: live([("a", 21), ("b", 19)])), .admitClosing(20))
        // a 20, b 20: nobody holds two more than the newcomer's peer; refused.
        XCTAssertEqual(admission.decide(peer: "b", live: live([("a", 20), ("b", 20)])), .refuse)
        XCTAssertEqual(admission.decide(peer: "a", live: live([("a", 20), ("b", 20)])), .refuse)
    }
}
