import BlockCore
import BlockDrivers
import LogOptionsClock
import XCTest

/// Each driver accepts the members of its branch of the schema's BlockdevOptions, and nothing else.
final class DriverKeysTests: XCTestCase {
    func testEveryDriverTakesItsSchemaBranch() {
        for (name, entry) in Drivers.all {
            // nbd also takes QEMU's earlier flat keys (host, port, path) besides its schema branch.
            let extra: Set<String> = name == "nbd" ? NBDClientOptions.legacyKeys : []
            XCTAssertEqual(entry.keys, Drivers.schemaKeys(of: name).union(extra), name)
            XCTAssertFalse(entry.keys.isEmpty, name)
        }
        XCTAssertEqual(Drivers.schemaKeys(of: "raw"), ["file", "offset", "size"])
        XCTAssertEqual(Drivers.schemaKeys(of: "throttle"), ["throttle-group", "file"])
        XCTAssertEqual(Drivers.schemaKeys(of: "file"), ["filename", "locking", "x-check-cache-dropped"])
        XCTAssertEqual(Drivers.schemaKeys(of: "null-co"), ["size", "latency-ns", "read-zeroes"])
        XCTAssertTrue(Drivers.schemaKeys(of: "qcow2").isSuperset(of: ["file", "backing", "l2-cache-entry-size", "cache-clean-interval"]))
    }

    func testAKeyOutsideTheSchemaIsRefusedByName() throws {
        let graph = BlockGraph(drivers: Drivers.all)
        let options = try KeyValueParser.parse("driver=null-co,node-name=n0,size=1M,offset=0")
        XCTAssertThrowsError(try graph.open(options, context: "--blockdev 'n0'")) { error in
            XCTAssertTrue("\(error)".contains("'offset'"), "\(error)")
        }
        let qmp = try KeyValueParser.parse("driver=null-co,node-name=n1,size=1M,offset=0")
        XCTAssertThrowsError(try graph.open(qmp, context: "blockdev-add", syntax: .qmp)) { error in
            XCTAssertEqual("\(error)", "Parameter 'offset' is unexpected")
        }
    }
}
