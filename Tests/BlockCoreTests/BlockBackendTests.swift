import BlockCore
import BlockDrivers
import Synchronization
import XCTest

/// A driver that counts how often it was closed.
private final class CountingDriver: BlockDriver {
    let driverName = "counting"
    let features = DriverFeatures()
    let length: UInt64 = 4096
    let closes = Atomic<Int>(0)
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {}
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {}
    func flush() throws(BlockError) {}
    func close() { closes.add(1, ordering: .relaxed) }
}

/// The tray and medium of a device as a state machine, and the generation requests follow it by.
final class BlockBackendTests: XCTestCase {
    private func node(_ name: String, readOnly: Bool = false) -> BlockNode {
        BlockNode(name: name, driver: NullDriver(driverName: "null-co", length: 1 << 20, latencyNanoseconds: 0, readZeroes: true),
                  readOnly: readOnly)
    }

    func testTrayAndMediumRules() {
        let a = node("a")
        let b = node("b")
        let backend = BlockBackend(id: "cd0", medium: a)
        XCTAssertTrue(backend.current().medium?.node === a)
        XCTAssertFalse(backend.isTrayOpen)
        XCTAssertThrowsError(try backend.removeMedium()) { XCTAssertEqual($0 as? BlockBackend.MediumError, .trayClosed) }
        XCTAssertThrowsError(try backend.insertMedium(b)) { XCTAssertEqual($0 as? BlockBackend.MediumError, .trayClosed) }

        XCTAssertTrue(backend.moveTray(open: true))
        XCTAssertFalse(backend.moveTray(open: true), "opening an open tray changes nothing")
        XCTAssertNil(backend.current().medium, "an open tray hides the medium")
        XCTAssertTrue(backend.medium === a, "but it stays inserted")
        XCTAssertThrowsError(try backend.insertMedium(b)) { XCTAssertEqual($0 as? BlockBackend.MediumError, .mediumPresent) }
        XCTAssertTrue(try backend.removeMedium()?.node === a)
        XCTAssertNil(try backend.removeMedium(), "removing from an empty open tray does nothing")
        XCTAssertNoThrow(try backend.insertMedium(b))
        XCTAssertNil(backend.current().medium)
        XCTAssertTrue(backend.moveTray(open: false))
        XCTAssertTrue(backend.current().medium?.node === b)
    }

    func testEveryChangeStartsANewGeneration() throws {
        let backend = BlockBackend(id: nil, medium: node("a"))
        var seen = Set([backend.generation])
        XCTAssertEqual(backend.current().generation, backend.generation)
        backend.moveTray(open: true)
        seen.insert(backend.generation)
        _ = try backend.removeMedium()
        seen.insert(backend.generation)
        try backend.insertMedium(node("b"))
        seen.insert(backend.generation)
        _ = try backend.changeMedium(to: node("c"))
        seen.insert(backend.generation)
        XCTAssertEqual(seen.count, 5)
        XCTAssertEqual(backend.current().generation, backend.generation)
    }

    func testChangeMediumSwapsInOneStepAndRemembersReadOnly() throws {
        let a = node("a")
        let backend = BlockBackend(id: "cd0", medium: a)
        XCTAssertFalse(backend.lastReadOnly)
        let change = try backend.changeMedium(to: node("ro", readOnly: true))
        XCTAssertTrue(change.old?.node === a)
        XCTAssertFalse(change.trayWasOpen)
        XCTAssertFalse(backend.isTrayOpen)
        XCTAssertEqual(backend.current().medium?.node.name, "ro")
        backend.moveTray(open: true)
        _ = try backend.removeMedium()
        XCTAssertTrue(backend.lastReadOnly, "kept while the device is empty")
        XCTAssertTrue(try backend.changeMedium(to: a).trayWasOpen)
    }

    func testANonRemovableDeviceRefusesEveryChange() {
        let backend = BlockBackend(id: "hd0", medium: node("a"), removable: false)
        backend.moveTray(open: true)
        XCTAssertThrowsError(try backend.removeMedium()) { XCTAssertEqual($0 as? BlockBackend.MediumError, .notRemovable) }
        XCTAssertThrowsError(try backend.changeMedium(to: node("b"))) { XCTAssertEqual($0 as? BlockBackend.MediumError, .notRemovable) }
    }

    func testARetiredMediumIsClosedWhenItsLastHolderLetsGo() throws {
        let driver = CountingDriver()
        let backend = BlockBackend(id: "cd0", medium: BlockNode(name: "#block1", driver: driver, readOnly: false))
        var held = backend.current().medium   // what a connection's request path holds
        do {
            let old = try backend.changeMedium(to: node("b")).old
            old?.closeWhenReleased([old!.node])
        }
        withExtendedLifetime(held) {
            XCTAssertEqual(driver.closes.load(ordering: .relaxed), 0, "a connection still holds it")
        }
        held = nil
        XCTAssertEqual(driver.closes.load(ordering: .relaxed), 1)
    }
}
