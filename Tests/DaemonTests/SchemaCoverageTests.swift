@testable import Daemon
import QAPI
import XCTest

/// Every command of the schema has a handler, or is on the one list of commands not implemented yet:
/// a command nobody wrote a handler for must not go unnoticed until a client gets CommandNotFound.
final class SchemaCoverageTests: XCTestCase {
    /// Schema commands without a handler yet, each with why (the issue that brings it).
    /// Empty since block jobs (#13) and dirty bitmaps (#12) landed: every schema command has one.
    static let notImplemented: [String: String] = [:]

    func testEverySchemaCommandHasAHandlerOrIsListed() {
        let table = QMPCommandTable()
        Daemon(configuration: DaemonConfiguration()).registerCommands(on: table)
        let handled = Set(table.registeredNames).union(["qmp_capabilities"])  // the session answers that one
        let schema = Set(QAPICommands.all.map { $0.name })
        let missing = schema.subtracting(handled).subtracting(SchemaCoverageTests.notImplemented.keys)
        XCTAssertEqual(missing.sorted(), [], "schema commands with no handler and not listed as not implemented")
        let stale = Set(SchemaCoverageTests.notImplemented.keys).intersection(handled)
        XCTAssertEqual(stale.sorted(), [], "listed as not implemented but handled: take them off the list")
        let unknown = handled.subtracting(schema)
        XCTAssertEqual(unknown.sorted(), [], "handlers for commands the schema does not have")
    }
}
