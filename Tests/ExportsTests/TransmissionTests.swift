#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import BlockTestSupport
import Dispatch
@testable import Exports
import NBDProtocol
import Sockets
import XCTest

/// The transmission phase over a socketpair: the server's connection code on one end, the test
/// client (written from doc/proto.md, not from the server's codecs) on the other, an in-memory
/// driver with fault injection underneath.
final class TransmissionTests: XCTestCase {
    private static let size = 1 << 20
    private var driver: MemoryDriver!
    private var client: NBDTestClient!
    private var finished: DispatchSemaphore!
    private var ended = false

    /// Serves a `MemoryDriver` export named "disk" on a new socketpair and connects the client.
    private func serve(structured: Bool = false, extended: Bool = false, writable: Bool = true, size: Int = TransmissionTests.size) throws {
        driver = MemoryDriver(length: size)
        let node = BlockNode(name: "mem", driver: driver, readOnly: false)
        let table = ExportTable()
        try table.add(NBDExport(id: "e0", name: "disk", description: nil, backend: BlockBackend(id: nil, medium: node), writable: writable))
        let (clientFD, serverFD) = NBDTestClient.socketPair()
        let done = DispatchSemaphore(value: 0)
        finished = done
        spawnThread {
            Connection(fd: serverFD, peer: "test", exports: table, handshakeTimeout: 10, engineFactory: nil, tls: nil, secured: { _ in }, attached: { _ in true }).run()
            close(serverFD)
            done.signal()
        }
        client = NBDTestClient(fd: clientFD)
        let info = try client.handshake(export: "disk", structured: structured, extended: extended)
        XCTAssertEqual(info.size, UInt64(size))
    }

    /// True when the server's connection thread ended within a few seconds.
    private func serverEnded() -> Bool {
        ended = ended || finished.wait(timeout: .now() + 10) == .success
        return ended
    }

    override func tearDown() {
        client?.close()
        if finished != nil { XCTAssertTrue(serverEnded(), "the connection thread ends when the client goes") }
    }

    private func pattern(_ seed: UInt8, _ count: Int) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(seed)) } }

    func testABatchIsAnsweredInOrderWithEachRequestsCookie() throws {
        try serve()
        // Eight writes and eight reads of what they wrote, sent with one system call.
        var batch: [UInt8] = []
        for index in 0..<8 {
            batch += client.request(.write, cookie: 100 + UInt64(index), offset: UInt64(index) * 8192, length: 4096, payload: pattern(UInt8(index), 4096))
        }
        for index in 0..<8 {
            batch += client.request(.read, cookie: 200 + UInt64(index), offset: UInt64(index) * 8192, length: 4096)
        }
        try client.send(batch)
        let replies = try (0..<16).map { _ in try client.receiveReply() }
        XCTAssertEqual(replies.map(\.cookie), (100..<108).map(UInt64.init) + (200..<208).map(UInt64.init))
        XCTAssertEqual(replies.map(\.error), [UInt32](repeating: 0, count: 16))
        for index in 0..<8 {
            XCTAssertEqual(replies[8 + index].payload, pattern(UInt8(index), 4096), "read \(index) sees the write before it in the batch")
        }
    }

    func testAFailureInTheMiddleOfABatchFailsOnlyThatRequest() throws {
        try serve()
        driver.fail(.write, nth: 3, errno: ENOSPC)
        var batch: [UInt8] = []
        for index in 0..<5 {
            batch += client.request(.write, cookie: UInt64(index), offset: UInt64(index) * 4096, length: 4096, payload: pattern(1, 4096))
        }
        batch += client.request(.flush, cookie: 9, length: 0)
        try client.send(batch)
        let replies = try (0..<6).map { _ in try client.receiveReply() }
        XCTAssertEqual(replies.map(\.cookie), [0, 1, 2, 3, 4, 9])
        XCTAssertEqual(replies.map(\.error), [0, 0, NBDError.noSpace.rawValue, 0, 0, 0])
        let contents = driver.contents
        XCTAssertEqual(Array(contents[8192..<12288]), [UInt8](repeating: 0, count: 4096), "the failed write left nothing")
        XCTAssertEqual(Array(contents[12288..<16384]), pattern(1, 4096), "the batch went on after the failure")
        XCTAssertEqual(try client.read(at: 0, length: 4096, cookie: 10).get(), pattern(1, 4096), "the connection stays up")
    }

    func testAFailedFlushIsReportedToEveryFlushOfTheBatch() throws {
        try serve(structured: true)
        driver.fail(.flush, errno: EIO)
        try client.send(client.request(.flush, cookie: 1, length: 0) + client.request(.flush, cookie: 2, length: 0))
        let replies = try (0..<2).map { _ in try client.receiveReply() }
        XCTAssertEqual(replies.map(\.cookie), [1, 2])
        XCTAssertEqual(replies.map(\.error), [NBDError.io.rawValue, NBDError.io.rawValue])
        XCTAssertEqual(driver.calls(.flush), 1, "one flush of the node answers the batch")
    }

    func testAStructuredReadFailureIsAnErrorChunk() throws {
        try serve(structured: true)
        driver.fail(.read, errno: EIO)
        try client.send(.read, cookie: 7, offset: 4096, length: 512)
        let reply = try client.receiveReply()
        XCTAssertEqual(reply.cookie, 7)
        XCTAssertTrue(reply.structured && reply.done)
        XCTAssertEqual(reply.type, ReplyChunkType.error.rawValue)
        XCTAssertEqual(reply.payload, [0, 0, 0, 5, 0, 0], "EIO and an empty message")
    }

    func testADisconnectInTheMiddleOfAWritePayloadWritesNothing() throws {
        try serve()
        try client.send(client.request(.write, cookie: 1, offset: 0, length: 65536, payload: pattern(3, 1000)))
        client.shutdownWrite()
        XCTAssertTrue(serverEnded(), "the server ends the connection at the end of the stream")
        XCTAssertEqual(driver.calls(.write), 0, "a partial payload never reaches the driver")
        XCTAssertTrue(client.seesEndOfStream())
    }

    func testAnOversizedWriteIsRefusedAndTheConnectionStaysUp() throws {
        try serve()
        let length = NBDExport.maxPayload + 4096
        try client.send(client.request(.write, cookie: 1, offset: 0, length: UInt64(length)))
        let fd = client.fd
        let sent = DispatchSemaphore(value: 0)
        DispatchQueue(label: "sender").async {
            // The payload, in pieces: the server must read past all of it to stay in sync.
            let piece = [UInt8](repeating: 0xaa, count: 1 << 20)
            var left = length
            while left > 0 {
                let count = min(left, piece.count)
                let result = piece.withUnsafeBytes { Glibc.send(fd, $0.baseAddress!, count, Int32(MSG_NOSIGNAL)) }
                if result <= 0 { break }
                left -= result
            }
            sent.signal()
        }
        let reply = try client.receiveReply()
        XCTAssertEqual(sent.wait(timeout: .now() + 20), .success)
        XCTAssertEqual(reply.cookie, 1)
        XCTAssertEqual(reply.error, NBDError.invalid.rawValue)
        XCTAssertEqual(driver.calls(.write), 0)
        XCTAssertEqual(try client.write([1, 2, 3], at: 10, cookie: 2), 0, "the next request is read from the right place")
        XCTAssertEqual(Array(driver.contents[10..<13]), [1, 2, 3])
    }

    func testAnOversizedReadIsRefused() throws {
        try serve(structured: true, size: NBDExport.maxPayload + (1 << 20))
        XCTAssertEqual(try client.read(at: 0, length: NBDExport.maxPayload + 1, cookie: 3), .failure(.init(errno: NBDError.overflow.rawValue)))
        XCTAssertEqual(driver.calls(.read), 0)
        XCTAssertEqual(try client.read(at: 0, length: 16, cookie: 4), .success([UInt8](repeating: 0, count: 16)))
    }

    func testRequestsPastTheEndAreRefused() throws {
        try serve()
        let end = UInt64(TransmissionTests.size)
        XCTAssertEqual(try client.write([1], at: end, cookie: 1), NBDError.noSpace.rawValue)
        XCTAssertEqual(try client.read(at: end - 1, length: 2, cookie: 2), .failure(.init(errno: NBDError.invalid.rawValue)))
        XCTAssertEqual(driver.calls(.write) + driver.calls(.read), 0)
    }

    func testWritesToAReadOnlyExportAreRefused() throws {
        try serve(writable: false)
        XCTAssertEqual(try client.write([1], at: 0, cookie: 1), NBDError.notPermitted.rawValue)
        XCTAssertEqual(driver.calls(.write), 0)
    }

    func testBadMagicEndsTheConnection() throws {
        try serve()
        try client.send([UInt8](repeating: 0x55, count: 28))
        XCTAssertTrue(serverEnded())
        XCTAssertTrue(client.seesEndOfStream())
    }

    func testDisconnectEndsTheConnectionAfterEarlierReplies() throws {
        try serve()
        try client.send(client.request(.write, cookie: 1, offset: 0, length: 4, payload: [9, 9, 9, 9]) + client.request(.disconnect, cookie: 2, length: 0))
        XCTAssertEqual(try client.receiveReply().cookie, 1)
        XCTAssertTrue(serverEnded())
        XCTAssertTrue(client.seesEndOfStream())
        XCTAssertEqual(Array(driver.contents[0..<4]), [9, 9, 9, 9])
    }

    func testExtendedHeadersCarry64BitLengthsAndEchoTheOffset() throws {
        try serve(extended: true)
        XCTAssertEqual(try client.write(pattern(5, 8192), at: 4096, cookie: 1), 0)
        XCTAssertEqual(try client.read(at: 4096, length: 8192, cookie: 2).get(), pattern(5, 8192))
    }
}
