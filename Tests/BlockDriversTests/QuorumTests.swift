#if canImport(Glibc)
import Glibc
#endif
import BlockCore
@testable import BlockDrivers
import BlockTestSupport
import Synchronization
import XCTest

final class QuorumTests: XCTestCase {
    /// Children answering `values` (nil: failed); equal values are equal contents.
    private func vote(_ values: [Int?], threshold: Int) -> QuorumVote.Outcome {
        let succeeded = values.indices.filter { values[$0] != nil }
        return QuorumVote(succeeded: succeeded, threshold: threshold) { values[$0] == values[$1] }.outcome
    }

    func testVote() {
        XCTAssertEqual(vote([1, 1, 1], threshold: 2), .unanimous(winner: 0))
        XCTAssertEqual(vote([nil, 1, 1], threshold: 2), .unanimous(winner: 1))
        XCTAssertEqual(vote([nil, nil, 1], threshold: 2), .failed, "too few answered")
        XCTAssertEqual(vote([2, 1, 1], threshold: 2), .majority(winner: 1, outvoted: [0]))
        XCTAssertEqual(vote([1, 2, 3], threshold: 2), .failed, "no two agree")
        XCTAssertEqual(vote([1, 2, 3], threshold: 1), .majority(winner: 0, outvoted: [1, 2]), "a tie goes to the first")
        XCTAssertEqual(vote([1, 2, 2, 1, 2], threshold: 3), .majority(winner: 1, outvoted: [0, 3]))
    }

    func testVoteError() {
        XCTAssertEqual(QuorumVote.error(of: [.io("a"), .posix("b", errno: ENOSPC), .posix("c", errno: ENOSPC)]).errno, ENOSPC)
        XCTAssertEqual(QuorumVote.error(of: [.io("a"), .posix("b", errno: ENOSPC)]).errno, EIO)
    }

    final class Events: Sendable {
        let list = Mutex<[BlockEvent]>([])
        var all: [BlockEvent] { list.withLock { $0 } }
    }

    func testReadOutvotesACorruptChildAndRewritesIt() throws {
        let graph = BlockGraph(drivers: Drivers.all)
        defer { graph.closeAll() }
        let events = Events()
        graph.events.install { event in events.list.withLock { $0.append(event) } }
        let drivers = (0..<3).map { _ in MemoryDriver(length: 65_536) }
        let nodes = drivers.enumerated().map { BlockNode(name: "c\($0.offset)", driver: $0.element, readOnly: false) }
        let quorum = QuorumDriver(nodeName: "q", children: nodes, threshold: 2, fifo: false, rewriteCorrupted: true,
                                  blkverify: false, events: graph.events)
        let data = [UInt8](repeating: 9, count: 4096)
        try data.withUnsafeBytes { try quorum.write($0, at: 4096, fua: false) }
        try [UInt8](repeating: 1, count: 512).withUnsafeBytes { try nodes[1].write($0, at: 4096, fua: false) }
        var read = [UInt8](repeating: 0, count: 4096)
        try read.withUnsafeMutableBytes { try quorum.read(into: $0, at: 4096) }
        XCTAssertEqual(read, data)
        XCTAssertEqual(events.all, [.quorumReportBad(operation: .read, error: nil, nodeName: "c1", sector: 8, sectors: 8)])
        XCTAssertEqual(drivers[1].contents[4096], 9, "rewritten with the majority's bytes")
        try [UInt8](repeating: 2, count: 512).withUnsafeBytes { try nodes[2].write($0, at: 4096, fua: false) }
        try [UInt8](repeating: 3, count: 512).withUnsafeBytes { try nodes[1].write($0, at: 4096, fua: false) }
        XCTAssertThrowsError(try read.withUnsafeMutableBytes { try quorum.read(into: $0, at: 4096) })
        XCTAssertEqual(events.all.last, .quorumFailure(reference: "q", sector: 8, sectors: 8))
    }
}
