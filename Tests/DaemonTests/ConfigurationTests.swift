import BlockCore
@testable import Daemon
import Exports
import XCTest

final class ConfigurationTests: XCTestCase {
    func testQemuStorageDaemonStyleOptions() throws {
        let configuration = try DaemonConfiguration(
            blockdevs: ["driver=null-co,node-name=n0"],
            servers: ["addr.type=unix,addr.path=/tmp/x.sock", "addr.type=inet,addr.host=::1,addr.port=10810,max-connections=5"],
            exports: ["type=nbd,id=e0,node-name=n0,writable=on,description=hello"])
        XCTAssertEqual(configuration.servers[0].address, .unix(path: "/tmp/x.sock"))
        XCTAssertEqual(configuration.servers[1].address, .inet(host: "::1", port: "10810"))
        XCTAssertEqual(configuration.servers[1].maxConnections, 5)
        XCTAssertEqual(configuration.exports, [ExportSpec(id: "e0", nodeName: "n0", name: "n0", description: "hello", writable: true)])
    }

    func testErrorsNameTheKey() {
        XCTAssertThrowsError(try DaemonConfiguration(blockdevs: [], servers: ["addr.type=unix"], exports: [])) {
            XCTAssertEqual("\($0)", "--nbd-server: parameter 'addr.path' is missing")
        }
        XCTAssertThrowsError(try DaemonConfiguration(blockdevs: [], servers: ["addr.type=vsock,addr.cid=3"], exports: [])) {
            XCTAssertEqual("\($0)", "--nbd-server: parameter 'addr.type' expects one of unix, inet, fd, got 'vsock'")
        }
        XCTAssertThrowsError(try DaemonConfiguration(blockdevs: [], servers: [], exports: ["type=nbd,id=e,node-name=n"])) {
            XCTAssertEqual("\($0)", "--export type=nbd needs an --nbd-server to serve it")
        }
        XCTAssertThrowsError(try DaemonConfiguration(blockdevs: [], servers: ["addr.type=unix,addr.path=/s"], exports: ["type=fuse,id=e,node-name=n"]))
        XCTAssertThrowsError(try DaemonConfiguration(blockdevs: [], servers: ["addr.type=unix,addr.path=/s"], exports: ["type=nbd,id=e,node-name=n,writeable=on"])) {
            XCTAssertEqual("\($0)", "--export: unknown parameter 'writeable'")
        }
    }
}
