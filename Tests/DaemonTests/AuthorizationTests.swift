@testable import Daemon
import XCTest

/// authz-list rules and globbing, and the TLS objects' option syntax.
final class AuthorizationTests: XCTestCase {
    func testGlobMatchesStarAndQuestionMarkOnly() {
        XCTAssertTrue(Glob.matches("*", ""))
        XCTAssertTrue(Glob.matches("CN=*,O=Example", "CN=fred,O=Example"))
        XCTAssertTrue(Glob.matches("CN=f?ed*", "CN=fred,O=Example"))
        XCTAssertFalse(Glob.matches("CN=f?ed", "CN=fred,O=Example"))
        XCTAssertFalse(Glob.matches("CN=*,O=Example", "CN=fred,O=Other"))
        XCTAssertTrue(Glob.matches("*a*b*", "xxaxxbxx"))
        XCTAssertFalse(Glob.matches("[ab]", "a"))
        XCTAssertTrue(Glob.matches("[ab]", "[ab]"))
    }

    func testFirstMatchingRuleDecidesElseDefault() throws {
        let configuration = try DaemonConfiguration(blockdevs: [], servers: [], exports: [], objects: [
            "authz-list,id=auth0,policy=deny,rules.0.match=CN=bad*,rules.0.policy=deny,rules.0.format=glob,rules.1.match=CN=*,rules.1.policy=allow,rules.1.format=glob,rules.2.match=alice,rules.2.policy=allow",
        ])
        guard case .authorization(_, .list(let list))? = configuration.securityObjects.first else { return XCTFail("no authz-list") }
        XCTAssertFalse(list.allowByDefault)
        XCTAssertFalse(list.allows("CN=badguy,O=Example"))
        XCTAssertTrue(list.allows("CN=good,O=Example"))
        XCTAssertTrue(list.allows("alice"))
        XCTAssertFalse(list.allows("alicex"))
        XCTAssertFalse(list.allows("O=Example"))
    }

    func testTLSObjectsParse() throws {
        let configuration = try DaemonConfiguration(blockdevs: [], servers: [], exports: [], objects: [
            "tls-creds-x509,id=tls0,dir=/etc/pki/blockd,endpoint=server,verify-peer=off,priority=NORMAL",
            "tls-creds-psk,id=psk0,dir=/etc/blockd,username=bob,endpoint=client",
            "authz-simple,id=a0,identity=O=Example,,CN=backup.example.com",
        ])
        XCTAssertEqual(configuration.securityObjects, [
            .credentials(CredentialsSpec(id: "tls0", kind: .x509, directory: "/etc/pki/blockd", endpoint: "server", verifyPeer: false, priority: "NORMAL", username: nil)),
            .credentials(CredentialsSpec(id: "psk0", kind: .psk, directory: "/etc/blockd", endpoint: "client", verifyPeer: true, priority: nil, username: "bob")),
            .authorization(id: "a0", .simple(identity: "O=Example,CN=backup.example.com")),
        ])
        XCTAssertThrowsError(try DaemonConfiguration(blockdevs: [], servers: [], exports: [], objects: ["tls-creds-x509,id=t"]))
        XCTAssertThrowsError(try DaemonConfiguration(blockdevs: [], servers: [], exports: [], objects: ["tls-creds-anon,id=t,endpoint=middle"]))
        XCTAssertThrowsError(try DaemonConfiguration(blockdevs: [], servers: ["addr.type=unix,addr.path=/x,tls-authz=a0"], exports: []))
    }
}
