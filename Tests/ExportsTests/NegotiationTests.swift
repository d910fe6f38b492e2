import BlockCore
import BlockDrivers
@testable import Exports
import NBDProtocol
import XCTest

/// The handshake as transcripts: options in, exact replies out (doc/proto.md § Option types).
final class NegotiationTests: XCTestCase {
    private var table: ExportTable!

    override func setUp() {
        table = ExportTable()
        let node = BlockNode(name: "n0", driver: NullDriver(driverName: "null-co", length: 1 << 20, latencyNanoseconds: 0, readZeroes: true), readOnly: false)
        try! table.add(NBDExport(id: "e0", name: "disk0", description: "first disk", backend: BlockBackend(id: nil, medium: node), writable: true))
        try! table.add(NBDExport(id: "e1", name: "ro", description: nil, backend: BlockBackend(id: nil, medium: node), writable: false))
    }

    /// The bytes of every `.send` action, and whether the session ended or entered transmission.
    private func run(_ machine: inout Negotiation, _ option: NBDOption, _ data: [UInt8] = []) -> (replies: [[UInt8]], session: NegotiatedSession?, closed: Bool) {
        var replies: [[UInt8]] = []
        var session: NegotiatedSession?
        var closed = false
        for action in machine.receive(option: option.rawValue, data: data) {
            switch action {
            case .send(let bytes): replies.append(bytes)
            case .transmit(let chosen): session = chosen
            case .close: closed = true
            case .startTLS: break
            }
        }
        return (replies, session, closed)
    }

    private func replyType(_ bytes: [UInt8]) -> UInt32 {
        var reader = ByteReader(bytes)
        _ = reader.read(UInt64.self)
        _ = reader.read(UInt32.self)
        return reader.read(UInt32.self)!
    }

    func testGreetingAdvertisesFixedNewstyleAndNoZeroes() {
        XCTAssertEqual(Negotiation.greeting, [0x4e, 0x42, 0x44, 0x4d, 0x41, 0x47, 0x49, 0x43, 0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54, 0, 3])
    }

    func testUnknownClientFlagsAreRefused() {
        var machine = Negotiation(exports: table)
        XCTAssertFalse(machine.receiveClientFlags(0x4))
        XCTAssertTrue(machine.receiveClientFlags(0x3))
    }

    func testListSendsEveryExportThenAck() {
        var machine = Negotiation(exports: table)
        let result = run(&machine, .list)
        XCTAssertEqual(result.replies.map(replyType), [2, 2, 1])
        XCTAssertEqual(Array(result.replies[0][20...]), [0, 0, 0, 5] + Array("disk0first disk".utf8))
        XCTAssertEqual(run(&machine, .list, [1]).replies.map(replyType), [OptionReplyType.errInvalid.rawValue])
    }

    func testUnknownOptionKeepsSessionGoing() {
        var machine = Negotiation(exports: table)
        let actions = machine.receive(option: 4711, data: [1, 2, 3])
        guard case .send(let bytes) = actions.first, actions.count == 1 else { return XCTFail("expected one reply") }
        XCTAssertEqual(replyType(bytes), OptionReplyType.errUnsupported.rawValue)
        XCTAssertNotNil(run(&machine, .go, InfoRequest(exportName: "disk0", requests: []).encode()).session)
    }

    func testStartTLSIsUnsupported() {
        var machine = Negotiation(exports: table)
        XCTAssertEqual(run(&machine, .startTLS).replies.map(replyType), [OptionReplyType.errUnsupported.rawValue])
    }

    /// With TLS configured: everything but STARTTLS and ABORT is refused with TLS_REQD, EXPORT_NAME
    /// closes, STARTTLS is acknowledged and then asks for the handshake; a second STARTTLS is invalid.
    func testTLSRequiredTranscript() {
        var machine = Negotiation(exports: table, tlsRequired: true)
        let required = OptionReplyType.errTLSRequired.rawValue
        XCTAssertEqual(run(&machine, .list).replies.map(replyType), [required])
        XCTAssertEqual(run(&machine, .go, InfoRequest(exportName: "disk0", requests: []).encode()).replies.map(replyType), [required])
        XCTAssertEqual(run(&machine, .structuredReply).replies.map(replyType), [required])
        let unknown = machine.receive(option: 4711, data: [])
        guard case .send(let bytes) = unknown.first else { return XCTFail("expected a reply") }
        XCTAssertEqual(replyType(bytes), required)
        XCTAssertEqual(run(&machine, .startTLS, [1]).replies.map(replyType), [OptionReplyType.errInvalid.rawValue])
        let start = machine.receive(option: NBDOption.startTLS.rawValue, data: [])
        XCTAssertEqual(start.count, 2)
        guard case .send(let ack) = start.first, case .startTLS = start.last else { return XCTFail("expected ack, then the handshake") }
        XCTAssertEqual(replyType(ack), OptionReplyType.ack.rawValue)
        XCTAssertEqual(run(&machine, .startTLS).replies.map(replyType), [OptionReplyType.errInvalid.rawValue])
        XCTAssertNotNil(run(&machine, .go, InfoRequest(exportName: "disk0", requests: []).encode()).session)
    }

    func testExportNameBeforeTLSCloses() {
        var machine = Negotiation(exports: table, tlsRequired: true)
        let result = run(&machine, .exportName, Array("disk0".utf8))
        XCTAssertTrue(result.closed)
        XCTAssertTrue(result.replies.isEmpty)
        var aborting = Negotiation(exports: table, tlsRequired: true)
        let abort = run(&aborting, .abort)
        XCTAssertEqual(abort.replies.map(replyType), [OptionReplyType.ack.rawValue])
        XCTAssertTrue(abort.closed)
    }

    func testGoForUnknownExport() {
        var machine = Negotiation(exports: table)
        let result = run(&machine, .go, InfoRequest(exportName: "nope", requests: []).encode())
        XCTAssertEqual(result.replies.map(replyType), [OptionReplyType.errUnknown.rawValue])
        XCTAssertNil(result.session)
    }

    func testInfoRepliesThenGoEntersTransmission() {
        var machine = Negotiation(exports: table)
        let request = InfoRequest(exportName: "disk0", requests: [InfoType.name.rawValue, InfoType.description.rawValue]).encode()
        let info = run(&machine, .info, request)
        XCTAssertNil(info.session)
        XCTAssertEqual(info.replies.map(replyType), [3, 3, 3, 3, 1])
        // NBD_INFO_EXPORT: type 0, size 1 MiB, flags.
        XCTAssertEqual(Array(info.replies[0][20..<30]), [0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0])
        let go = run(&machine, .go, request)
        XCTAssertEqual(go.session?.export.name, "disk0")
        XCTAssertEqual(go.session?.style, .simple)
        XCTAssertEqual(go.session?.flags.contains(.sendDF), false, "DF needs structured replies")
    }

    func testReadOnlyExportFlags() {
        var machine = Negotiation(exports: table)
        let flags = run(&machine, .go, InfoRequest(exportName: "ro", requests: []).encode()).session!.flags
        XCTAssertTrue(flags.contains(.readOnly))
        XCTAssertFalse(flags.contains(.sendTrim))
        XCTAssertFalse(flags.contains(.sendWriteZeroes))
    }

    func testMetaContextNeedsStructuredRepliesAndIsRemembered() {
        var machine = Negotiation(exports: table)
        let query = MetaContextRequest(exportName: "disk0", queries: ["base:allocation"]).encode()
        XCTAssertEqual(run(&machine, .setMetaContext, query).replies.map(replyType), [OptionReplyType.errInvalid.rawValue])
        XCTAssertEqual(run(&machine, .structuredReply).replies.map(replyType), [1])
        let set = run(&machine, .setMetaContext, query)
        XCTAssertEqual(set.replies.map(replyType), [4, 1])
        XCTAssertEqual(Array(set.replies[0][20...]), [0, 0, 0, 1] + Array("base:allocation".utf8))
        let listed = run(&machine, .listMetaContext, MetaContextRequest(exportName: "disk0", queries: ["base:"]).encode())
        XCTAssertEqual(Array(listed.replies[0][20...]), [0, 0, 0, 0] + Array("base:allocation".utf8))
        let session = run(&machine, .go, InfoRequest(exportName: "disk0", requests: []).encode()).session
        XCTAssertEqual(session?.contexts, [.baseAllocation])
        XCTAssertEqual(session?.style, .structured)
    }

    func testNamespaceQueryOnlyListsAndFailedSetClears() {
        var machine = Negotiation(exports: table)
        _ = run(&machine, .structuredReply)
        XCTAssertEqual(run(&machine, .setMetaContext, MetaContextRequest(exportName: "disk0", queries: ["base:"]).encode()).replies.map(replyType), [1])
        _ = run(&machine, .setMetaContext, MetaContextRequest(exportName: "disk0", queries: ["base:allocation"]).encode())
        XCTAssertEqual(run(&machine, .setMetaContext, MetaContextRequest(exportName: "nosuch", queries: ["base:allocation"]).encode()).replies.map(replyType),
                       [OptionReplyType.errUnknown.rawValue])
        XCTAssertEqual(run(&machine, .go, InfoRequest(exportName: "disk0", requests: []).encode()).session?.contexts, [])
    }

    func testContextsForAnotherExportAreNotCarriedOver() {
        var machine = Negotiation(exports: table)
        _ = run(&machine, .structuredReply)
        _ = run(&machine, .setMetaContext, MetaContextRequest(exportName: "disk0", queries: ["base:allocation"]).encode())
        XCTAssertEqual(run(&machine, .go, InfoRequest(exportName: "ro", requests: []).encode()).session?.contexts, [])
    }

    func testExtendedHeadersThenStructuredIsInvalid() {
        var machine = Negotiation(exports: table)
        XCTAssertEqual(run(&machine, .extendedHeaders).replies.map(replyType), [1])
        XCTAssertEqual(run(&machine, .structuredReply).replies.map(replyType), [OptionReplyType.errExtendedHeaderRequired.rawValue])
        XCTAssertEqual(run(&machine, .go, InfoRequest(exportName: "disk0", requests: []).encode()).session?.style, .extended)
    }

    func testExportNameHonoursNoZeroes() {
        var withZeroes = Negotiation(exports: table)
        _ = withZeroes.receiveClientFlags(1)
        XCTAssertEqual(run(&withZeroes, .exportName, Array("disk0".utf8)).replies.first?.count, 8 + 2 + 124)
        var without = Negotiation(exports: table)
        _ = without.receiveClientFlags(3)
        XCTAssertEqual(run(&without, .exportName, Array("disk0".utf8)).replies.first?.count, 10)
        XCTAssertTrue(run(&without, .exportName, Array("missing".utf8)).closed)
    }

    func testExportWithoutMediumIsRefusedButListed() throws {
        let backend = BlockBackend(id: "cd0", medium: nil)
        try table.add(NBDExport(id: "e2", name: "empty", description: nil, backend: backend, writable: true))
        var machine = Negotiation(exports: table)
        XCTAssertEqual(run(&machine, .list).replies.map(replyType), [2, 2, 2, 1])
        for option in [NBDOption.info, .go] {
            let result = run(&machine, option, InfoRequest(exportName: "empty", requests: []).encode())
            XCTAssertEqual(result.replies.map(replyType), [OptionReplyType.errUnknown.rawValue])
            XCTAssertTrue(String(decoding: result.replies[0][20...], as: UTF8.self).hasSuffix("has no medium (the tray is open or the medium was removed)"))
            XCTAssertNil(result.session)
        }
        XCTAssertTrue(run(&machine, .exportName, Array("empty".utf8)).closed)
        // With a medium inserted (tray closed) the same export is served.
        backend.moveTray(open: true)
        try backend.insertMedium(BlockNode(name: "n1", driver: NullDriver(driverName: "null-co", length: 8192, latencyNanoseconds: 0, readZeroes: true), readOnly: true))
        backend.moveTray(open: false)
        let go = run(&machine, .go, InfoRequest(exportName: "empty", requests: []).encode())
        XCTAssertEqual(go.session?.export.id, "e2")
        XCTAssertEqual(Array(go.replies[0][22..<30]), [0, 0, 0, 0, 0, 0, 0x20, 0], "the medium's size")
        XCTAssertTrue(go.session!.flags.contains(.readOnly), "a read-only medium makes a writable export read-only")
    }

    func testResizeFlagNeedsXResizeAndAWritableExport() throws {
        let node = BlockNode(name: "n2", driver: NullDriver(driverName: "null-co", length: 1 << 20, latencyNanoseconds: 0, readZeroes: true), readOnly: false)
        try table.add(NBDExport(id: "e3", name: "resizable", description: nil, backend: BlockBackend(id: nil, medium: node), writable: true, resizable: true))
        try table.add(NBDExport(id: "e4", name: "resizable-ro", description: nil, backend: BlockBackend(id: nil, medium: node), writable: false, resizable: true))
        var machine = Negotiation(exports: table)
        func flags(_ name: String) -> TransmissionFlags { run(&machine, .go, InfoRequest(exportName: name, requests: []).encode()).session!.flags }
        XCTAssertTrue(flags("resizable").contains(.sendResize))
        XCTAssertFalse(flags("resizable-ro").contains(.sendResize))
        XCTAssertFalse(flags("disk0").contains(.sendResize))
    }

    func testAbortAcknowledgesAndCloses() {
        var machine = Negotiation(exports: table)
        let result = run(&machine, .abort)
        XCTAssertEqual(result.replies.map(replyType), [1])
        XCTAssertTrue(result.closed)
    }

    func testOversizedOptionAnswersTooBig() {
        let machine = Negotiation(exports: table)
        guard case .send(let bytes) = machine.rejectOversized(option: 6).first else { return XCTFail() }
        XCTAssertEqual(replyType(bytes), OptionReplyType.errTooBig.rawValue)
    }
}
