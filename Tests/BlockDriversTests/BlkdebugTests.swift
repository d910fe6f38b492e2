#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import BlockDrivers
import XCTest
import LogOptionsClock

final class BlkdebugTests: XCTestCase {
    private func rules(_ text: String) throws -> BlkdebugRuleSet {
        try BlkdebugRuleSet(options: OptionReader(try KeyValueParser.parse(text), context: "test"))
    }

    func testEventNamesAreTheContractsSpellings() {
        XCTAssertEqual(BlkdebugEvent.allCases.count, 43)
        XCTAssertEqual(BlkdebugEvent.l1Update.name, "l1_update")
        XCTAssertEqual(BlkdebugEvent.flushToOs.name, "flush_to_os")
        XCTAssertEqual(BlkdebugEvent.emptyImagePrepare.name, "empty_image_prepare")
        for event in BlkdebugEvent.allCases { XCTAssertEqual(BlkdebugEvent(name: event.name), event) }
        XCTAssertNil(BlkdebugEvent(name: "l2-load"))
    }

    func testArmedRuleFailsTheNextRequestOnceThenGoes() throws {
        var machine = BlkdebugMachine(rules: try rules("inject-error.0.event=read_aio,inject-error.0.once=on"))
        XCTAssertNil(machine.failure(offset: 0, length: 512), "nothing is armed before the event")
        machine.raise(.writeAio)
        XCTAssertNil(machine.failure(offset: 0, length: 512))
        machine.raise(.readAio)
        XCTAssertEqual(machine.failure(offset: 0, length: 512), EIO)
        XCTAssertNil(machine.failure(offset: 0, length: 512))
        machine.raise(.readAio)
        XCTAssertNil(machine.failure(offset: 0, length: 512), "a once rule is deleted when it fires")
    }

    func testRuleWithoutOnceStaysArmedUntilAnotherEventArms() throws {
        var machine = BlkdebugMachine(rules: try rules(
            "inject-error.0.event=read_aio,inject-error.0.errno=28,inject-error.1.event=write_aio,inject-error.1.errno=0"))
        machine.raise(.readAio)
        XCTAssertEqual(machine.failure(offset: 0, length: 512), ENOSPC)
        XCTAssertEqual(machine.failure(offset: 0, length: 512), ENOSPC)
        machine.raise(.flushToOs)  // no rule: what is armed stays armed
        XCTAssertEqual(machine.failure(offset: 0, length: nil), ENOSPC)
        machine.raise(.writeAio)  // arms an errno-0 rule in its place: nothing fails
        XCTAssertNil(machine.failure(offset: 0, length: 512))
    }

    func testSectorMustBeTouched() throws {
        var machine = BlkdebugMachine(rules: try rules("inject-error.0.event=read_aio,inject-error.0.sector=8,inject-error.0.once=on"))
        machine.raise(.readAio)
        XCTAssertNil(machine.failure(offset: 0, length: 4096))  // sectors 0..7
        XCTAssertNil(machine.failure(offset: 0, length: nil), "flushes only fail for rules of any sector")
        XCTAssertEqual(machine.failure(offset: 4000, length: 200), EIO)  // 4000..4199 touches sector 7 and 8
    }

    func testStateMachine() throws {
        var machine = BlkdebugMachine(rules: try rules(
            "set-state.0.event=write_aio,set-state.0.state=1,set-state.0.new_state=2,"
                + "set-state.1.event=write_aio,set-state.1.state=2,set-state.1.new_state=3,"
                + "inject-error.0.event=read_aio,inject-error.0.state=2,inject-error.0.once=on"))
        XCTAssertEqual(machine.state, 1)
        machine.raise(.readAio)
        XCTAssertNil(machine.failure(offset: 0, length: 512), "the rule is for state 2")
        machine.raise(.writeAio)
        XCTAssertEqual(machine.state, 2, "one change per event, decided on the state before it")
        machine.raise(.readAio)
        XCTAssertEqual(machine.failure(offset: 0, length: 512), EIO)
        machine.raise(.writeAio)
        XCTAssertEqual(machine.state, 3)
        machine.replace(BlkdebugRuleSet(), state: 7)
        XCTAssertEqual(machine.state, 7)
        XCTAssertFalse(machine.isArmed)
    }

    func testRulesAreCheckedLikeQMPArguments() throws {
        let value = try OptionValue.parseJSON(#"{"inject-error": [{"event": "read_aio"}, {"event": "l2_lod"}]}"#)
        XCTAssertThrowsError(try BlkdebugRuleSet(options: OptionReader(value, context: "x", syntax: .qmp))) {
            XCTAssertEqual("\($0)", "Parameter 'inject-error[1].event' does not accept value 'l2_lod'")
        }
        let missing = try OptionValue.parseJSON(#"{"set-state": [{"event": "read_aio"}]}"#)
        XCTAssertThrowsError(try BlkdebugRuleSet(options: OptionReader(missing, context: "x", syntax: .qmp))) {
            XCTAssertEqual("\($0)", "Parameter 'set-state[0].new_state' is missing")
        }
        XCTAssertThrowsError(try rules("inject-error.0.event=read_aio,inject-error.0.bogus=1")) {
            XCTAssertEqual("\($0)", "test: unknown parameter 'inject-error.0.bogus'")
        }
    }

    func testConfigFile() throws {
        let text = """
            # QEMU's blkdebug config syntax
            [inject-error]
            event = "read_aio"
            errno = "5"
            once = "on"

            [set-state]
              event = "write_aio"
              state = "1"
              new_state = "2"
            [inject-error "second"]
            event = write_aio
            sector = 3
            """
        let parsed = try BlkdebugConfig.parse(text, name: "rules.conf")
        var first = BlkdebugInjectError(event: .readAio)
        first.once = true
        var second = BlkdebugInjectError(event: .writeAio)
        second.sector = 3
        XCTAssertEqual(parsed.injectErrors, [first, second])
        XCTAssertEqual(parsed.setStates, [BlkdebugSetState(event: .writeAio, state: 1, newState: 2)])
        XCTAssertThrowsError(try BlkdebugConfig.parse("[suspend]\nevent = \"read_aio\"", name: "c")) {
            XCTAssertEqual("\($0)", "c:1: there is no option group 'suspend' (blkdebug knows inject-error and set-state)")
        }
        XCTAssertThrowsError(try BlkdebugConfig.parse("event = \"read_aio\"", name: "c")) {
            XCTAssertEqual("\($0)", "c:1: 'event' is outside of any group")
        }
        XCTAssertThrowsError(try BlkdebugConfig.parse("[inject-error]\nevent = \"nope\"", name: "c")) {
            XCTAssertEqual("\($0)", "blkdebug config c:1 [inject-error]: parameter 'event' expects one of "
                + BlkdebugEvent.allCases.map(\.name).joined(separator: ", ") + ", got 'nope'")
        }
    }

    func testDriverFailsReadsThroughRawAndAlignsRequests() throws {
        let graph = BlockGraph(drivers: Drivers.all)
        defer { graph.closeAll() }
        try graph.open(try KeyValueParser.parse("driver=null-co,node-name=n,size=1M,read-zeroes=on"))
        let debug = try graph.open(try KeyValueParser.parse(
            "driver=blkdebug,node-name=d,image=n,align=4096,inject-error.0.event=read_aio,inject-error.0.errno=1,inject-error.0.once=on"))
        XCTAssertEqual(debug.features.alignment, 4096)
        let raw = try graph.open(try KeyValueParser.parse("driver=raw,node-name=r,file=d"))
        var buffer = [UInt8](repeating: 0, count: 512)
        XCTAssertThrowsError(try buffer.withUnsafeMutableBytes { try raw.read(into: $0, at: 0) }) {
            XCTAssertEqual(($0 as? BlockError)?.errno, EPERM)
        }
        try buffer.withUnsafeMutableBytes { try raw.read(into: $0, at: 0) }
        let driver = try XCTUnwrap(debug.driver as? BlkdebugDriver)
        driver.replaceRules(try rules("inject-error.0.event=pwritev_rmw_head,inject-error.0.immediately=on,inject-error.0.once=on"))
        // The blkdebug node emulates the unaligned write: its head read fails.
        XCTAssertThrowsError(try buffer.withUnsafeBytes { try debug.write($0, at: 100, fua: false) }) {
            XCTAssertEqual(($0 as? BlockError)?.errno, EIO)
        }
        try buffer.withUnsafeBytes { try debug.write($0, at: 4096, fua: false) }
        XCTAssertThrowsError(try graph.open(try KeyValueParser.parse("driver=blkdebug,node-name=e,image=n,align=3000")))
        XCTAssertThrowsError(try graph.open(try KeyValueParser.parse("driver=blkdebug,node-name=e"))) {
            XCTAssertEqual("\($0)", "--blockdev 'e' (driver blkdebug): parameter 'image' is missing")
        }
    }
}
