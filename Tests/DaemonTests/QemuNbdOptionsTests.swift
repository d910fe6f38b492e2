import BlockCore
import Daemon
import Sockets
import XCTest

/// qemu-nbd's command line as blockd-nbd reads it: getopt_long's rules, qemu-nbd's checks and
/// messages (checked against qemu-nbd 7.2), and the daemon configuration it becomes.
final class QemuNbdOptionsTests: XCTestCase {
    private func parse(_ words: [String]) throws(QemuNbdError) -> QemuNbdOptions {
        try QemuNbdOptions.parse(words)
    }

    private func failure(_ words: [String], argv0: String = "qemu-nbd") -> String? {
        do {
            _ = try QemuNbdOptions.parse(words)
            return nil
        } catch {
            return error.text(argv0: argv0)
        }
    }

    func testGetoptClustersAttachedValuesPrefixesAndPermutation() throws {
        let options = try parse(["disk.img", "-rtx", "vda", "--persist", "-e2", "--socket=/run/s", "-A"])
        XCTAssertTrue(options.readOnly)
        XCTAssertTrue(options.persistent)
        XCTAssertTrue(options.allocationDepth)
        XCTAssertEqual(options.exportName, "vda")
        XCTAssertEqual(options.shared, 2)
        XCTAssertEqual(options.socketPath, "/run/s")
        XCTAssertEqual(options.file, "disk.img")
        // After "--" every word is an operand, even one that looks like an option.
        XCTAssertEqual(try parse(["-k", "/s", "--", "-weird-name"]).file, "-weird-name")
        // A required value is the next word, whatever it looks like: "-x -k" names the export "-k".
        XCTAssertEqual(failure(["-x", "-k"]), "qemu-nbd: Invalid number of arguments\nTry `qemu-nbd --help' for more information.\n")
    }

    func testGetoptErrorsAreGlibcs() {
        XCTAssertEqual(failure(["--bogus"], argv0: "/usr/bin/qemu-nbd"),
                       "/usr/bin/qemu-nbd: unrecognized option '--bogus'\nqemu-nbd: Try `/usr/bin/qemu-nbd --help' for more information.\n")
        XCTAssertEqual(failure(["-Z"]), "qemu-nbd: invalid option -- 'Z'\nqemu-nbd: Try `qemu-nbd --help' for more information.\n")
        XCTAssertEqual(failure(["-r=1"]), "qemu-nbd: invalid option -- '='\nqemu-nbd: Try `qemu-nbd --help' for more information.\n")
        XCTAssertEqual(failure(["--read-only=1", "f"]),
                       "qemu-nbd: option '--read-only' doesn't allow an argument\nqemu-nbd: Try `qemu-nbd --help' for more information.\n")
        XCTAssertEqual(failure(["--export-name"]),
                       "qemu-nbd: option '--export-name' requires an argument\nqemu-nbd: Try `qemu-nbd --help' for more information.\n")
        XCTAssertEqual(failure(["f", "-x"]),
                       "qemu-nbd: option requires an argument -- 'x'\nqemu-nbd: Try `qemu-nbd --help' for more information.\n")
        XCTAssertEqual(failure(["--p", "f"]),
                       "qemu-nbd: option '--p' is ambiguous; possibilities: '--port' '--persistent' '--pid-file'\nqemu-nbd: Try `qemu-nbd --help' for more information.\n")
    }

    func testQemuNbdChecksInOrder() {
        XCTAssertEqual(failure(["-e", "x", "f"]), "qemu-nbd: Invalid shared device number 'x'\n")
        XCTAssertEqual(failure(["-e", "-1", "f"]), "qemu-nbd: Invalid shared device number '-1'\n")
        XCTAssertEqual(failure(["-e", "", "f"]), "qemu-nbd: Invalid shared device number ''\n")
        XCTAssertEqual(failure(["-k", "rel", "f"]), "qemu-nbd: socket path must be absolute\n")
        XCTAssertEqual(failure(["--cache=foo", "f"]), "qemu-nbd: Invalid cache mode `foo'\n")
        XCTAssertEqual(failure(["--aio=foo", "f"]), "qemu-nbd: Invalid aio mode 'foo'\n")
        XCTAssertEqual(failure(["--discard=foo", "f"]), "qemu-nbd: Invalid discard mode `foo'\n")
        XCTAssertEqual(failure(["--detect-zeroes=foo", "f"]), "qemu-nbd: Failed to parse detect_zeroes mode: invalid parameter value: foo\n")
        // --discard must come first: qemu-nbd checks --detect-zeroes=unmap when it reads it.
        XCTAssertEqual(failure(["--detect-zeroes=unmap", "--discard=on", "f"]),
                       "qemu-nbd: setting detect-zeroes to unmap is not allowed without setting discard operation to unmap\n")
        XCTAssertNil(failure(["--discard=on", "--detect-zeroes=unmap", "f"]))
        XCTAssertEqual(failure(["-n", "--cache=none", "f"]), "qemu-nbd: -n and --cache can only be specified once\n")
        XCTAssertEqual(failure(["-o", "x", "f"]), "qemu-nbd: Invalid offset 'x'\n")
        XCTAssertEqual(failure(["-l", "snapshot.foo=1", "f"]),
                       "qemu-nbd: Invalid parameter 'snapshot.foo'\nqemu-nbd: Failed in parsing snapshot param `snapshot.foo=1'\n")
        XCTAssertEqual(failure(["-L", "x"]), "qemu-nbd: List mode is incompatible with a file name\n")
        XCTAssertEqual(failure(["-L", "-x", "foo"]), "qemu-nbd: List mode is incompatible with per-device settings\n")
        XCTAssertEqual(failure(["-L", "--fork"]), "qemu-nbd: List mode is incompatible with forking\n")
        XCTAssertEqual(failure(["--tls-authz=a", "f"]), "qemu-nbd: --tls-authz is not permitted without --tls-creds\n")
        XCTAssertEqual(failure(["--tls-hostname=x", "f"]), "qemu-nbd: --tls-hostname is not permitted without --tls-creds\n")
        // qemu-nbd 7.2 takes TLS over unix sockets too: the credentials are looked up first.
        XCTAssertEqual(failure(["--tls-creds=t", "-k", "/s", "f"]), "qemu-nbd: Failed to get TLS creds: No TLS credentials with id 't'\n")
        XCTAssertEqual(failure(["--tls-creds=t", "-c", "/dev/nbd0", "f"]), "qemu-nbd: TLS is not supported with a host device\n")
        XCTAssertEqual(failure(["--selinux-label=x", "f"]), "qemu-nbd: --selinux-label is not permitted without --socket\n")
        XCTAssertEqual(failure(["--object", "foo,id=x", "f"]), "qemu-nbd: Parameter 'qom-type' does not accept value 'foo'\n")
        XCTAssertEqual(failure(["--object", "secret", "f"]), "qemu-nbd: Parameter 'id' is missing\n")
        XCTAssertEqual(failure(["-x", String(repeating: "n", count: 4097), "f"]).map { $0.hasSuffix("too long\n") }, true)
    }

    func testActions() throws {
        XCTAssertEqual(try parse(["-h", "--bogus"]).action, .help)
        XCTAssertEqual(try parse(["--version"]).action, .version)
        XCTAssertEqual(try parse(["-L", "-k", "/s"]).action, .list)
        XCTAssertEqual(try parse(["-d", "/dev/nbd0"]).action, .disconnect("/dev/nbd0"))
        XCTAssertEqual(try parse(["-c", "/dev/nbd0", "f"]).device, "/dev/nbd0")
        XCTAssertEqual(try parse(["-l", "snap1", "f"]).readOnly, true)
        XCTAssertEqual(try parse(["-e", "0x10", "f"]).shared, 16)
        XCTAssertEqual(try parse(["-o", "0x200", "f"]).offset, 512)
    }

    func testConfiguration() throws {
        let options = try parse(["-k", "/run/s", "-x", "vda", "-D", "text", "-e", "3", "-A", "-r", "--cache=none", "--aio=native",
                                 "--discard=unmap", "--detect-zeroes=unmap", "disk.qcow2"])
        guard case .object(let image) = options.imageDefinition(format: "qcow2") else { return XCTFail("not an object") }
        let node = options.topDefinition(image: image, format: "qcow2", overlay: nil)
        let configuration = options.configuration(node: node, address: options.listenAddress)
        XCTAssertEqual(configuration.servers.first?.address, .unix(path: "/run/s"))
        XCTAssertEqual(configuration.servers.first?.maxConnections, 3)
        let export = try XCTUnwrap(configuration.exports.first)
        XCTAssertEqual(export.name, "vda")
        XCTAssertEqual(export.description, "text")
        XCTAssertFalse(export.writable)
        XCTAssertTrue(export.allocationDepth)
        guard case .object(let top) = node, case .object(let file)? = top["file"] else { return XCTFail("no file child") }
        XCTAssertEqual(top["driver"], .string("qcow2"))
        XCTAssertEqual(top["detect-zeroes"], .string("unmap"))
        XCTAssertEqual(file["filename"], .string("disk.qcow2"))
        XCTAssertEqual(file["aio"], .string("native"))
        XCTAssertEqual(file["cache"], .object(["direct": .bool(true), "no-flush": .bool(false)]))
        // qemu-nbd's defaults: 0.0.0.0:10809, one client, the empty export name.
        let defaults = try parse(["f"])
        XCTAssertEqual(defaults.listenAddress, .inet(host: "0.0.0.0", port: "10809"))
        XCTAssertEqual(defaults.shared, 1)
        XCTAssertEqual(defaults.exportName, "")
        // -e 0: no limit.
        let unlimited = try parse(["-e", "0", "f"])
        XCTAssertGreaterThan(unlimited.configuration(node: .object([:]), address: unlimited.listenAddress).servers[0].maxConnections, 100_000)
    }
}
