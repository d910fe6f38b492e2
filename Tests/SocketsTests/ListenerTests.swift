#if canImport(Glibc)
import Glibc
#endif
import LogOptionsClock
import Dispatch
import Sockets
import Synchronization
import XCTest

/// Listening and accepting on a unix socket and on 127.0.0.1, and the `addr.*` options.
final class ListenerTests: XCTestCase {
    private func address(_ text: String) throws(OptionError) -> ListenAddress {
        try ListenAddress.parse(OptionReader(KeyValueParser.parse(text), context: "addr"))
    }

    func testAddressesParseWithTheirDefaults() throws {
        XCTAssertEqual(try address("type=unix,path=/run/x.sock"), .unix(path: "/run/x.sock"))
        XCTAssertEqual(try address("type=inet,host=::1,port=10810"), .inet(host: "::1", port: "10810"))
        XCTAssertEqual(try address("type=inet"), .inet(host: "127.0.0.1", port: "10809"))
        XCTAssertEqual(try address("host=localhost"), .inet(host: "localhost", port: "10809"), "inet is the default type")
        XCTAssertEqual(try address("type=fd,str=3"), .fd(3))
        XCTAssertEqual(try address("type=fd,str=nbd"), .fdName("nbd"))
        XCTAssertEqual(ListenAddress.inet(host: "::1", port: "1").description, "[::1]:1")
    }

    func testBadAddressesAreRefusedWithTheReason() {
        XCTAssertThrowsError(try address("type=unix")) { XCTAssertTrue("\($0)".contains("path"), "\($0)") }
        XCTAssertThrowsError(try address("type=unix,path=/" + String(repeating: "a", count: 110))) {
            XCTAssertTrue("\($0)".contains("longer than 107 bytes"), "\($0)")
        }
        XCTAssertThrowsError(try address("type=vsock,cid=3")) { XCTAssertTrue("\($0)".contains("type"), "\($0)") }
        XCTAssertThrowsError(try address("type=fd,str=-1")) { XCTAssertTrue("\($0)".contains("not a file descriptor"), "\($0)") }
        XCTAssertThrowsError(try address("type=inet,port=1,colour=red")) { XCTAssertTrue("\($0)".contains("colour"), "\($0)") }
    }

    /// Accepts one connection on `listener`, then connects with `connect` and exchanges a byte both ways.
    private func exchange(on listener: Listener, connect: () -> Int32) throws -> Peer {
        let accepted = Accepted()
        let arrived = DispatchSemaphore(value: 0)
        listener.start { fd, peer in
            accepted.value.withLock { $0 = (fd, peer) }
            arrived.signal()
        }
        let client = connect()
        XCTAssertGreaterThanOrEqual(client, 0, "connect: errno \(errno)")
        defer { close(client) }
        XCTAssertEqual(arrived.wait(timeout: .now() + 10), .success, "the listener accepted")
        let (server, peer) = try XCTUnwrap(accepted.value.withLock { $0 })
        defer { close(server) }
        var byte: UInt8 = 42
        XCTAssertEqual(write(client, &byte, 1), 1)
        byte = 0
        XCTAssertEqual(read(server, &byte, 1), 1)
        XCTAssertEqual(byte, 42)
        return peer
    }

    func testAUnixListenerAcceptsAndRemovesItsSocketFileOnClose() throws {
        let path = "/tmp/blockd-listener-\(getpid()).sock"
        unlink(path)
        let listener = try Listener(address: .unix(path: path))
        let peer = try exchange(on: listener) {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            let result = withUnixAddress(path) { connect(fd, $0, $1) }
            return result == 0 ? fd : -1
        }
        XCTAssertTrue(peer.identity.contains("pid \(getpid())"), "a unix peer is its process: \(peer.identity)")
        listener.close()
        XCTAssertNotEqual(access(path, F_OK), 0, "the socket file is gone")
    }

    func testATCPListenerOnAnEphemeralLoopbackPortAccepts() throws {
        let listener = try Listener(address: .inet(host: "127.0.0.1", port: "0"))
        defer { listener.close() }
        let port = try XCTUnwrap(listener.boundPort)
        XCTAssertGreaterThan(port, 0)
        let peer = try exchange(on: listener) {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = UInt16(port).bigEndian
            address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            return result == 0 ? fd : -1
        }
        XCTAssertEqual(peer.identity, "127.0.0.1", "a TCP peer is its host")
        XCTAssertTrue(peer.description.hasPrefix("127.0.0.1:"))
    }

    func testBindingAnAddressInUseFailsNamingIt() throws {
        let first = try Listener(address: .inet(host: "127.0.0.1", port: "0"))
        defer { first.close() }
        let port = try XCTUnwrap(first.boundPort)
        XCTAssertThrowsError(try Listener(address: .inet(host: "127.0.0.1", port: "\(port)"))) {
            XCTAssertTrue("\($0)".contains("\(port)"), "\($0)")
        }
    }
}

/// The connection the listener accepted, handed from its thread to the test's.
private final class Accepted: Sendable {
    let value = Mutex<(Int32, Peer)?>(nil)
}
