import BlockCore
import BlockDrivers
import Foundation
import XCTest

/// Internal snapshots made, applied and deleted by Qcow2SnapshotEditor, checked with qemu-img and qemu-io.
final class Qcow2SnapshotTests: QemuImageTestCase {
    private func assertClean(_ path: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let (status, output) = try run(["/usr/bin/qemu-img", "check", path])
        XCTAssertEqual(status, 0, output, file: file, line: line)
    }

    private func editor(_ path: String) throws -> Qcow2SnapshotEditor {
        let graph = BlockGraph(drivers: Drivers.all)
        let node = try graph.open(.object(["driver": .string("file"), "filename": .string(path)]))
        return try Qcow2SnapshotEditor(file: node)
    }

    func testCreateApplyDelete() throws {
        for options in ["cluster_size=4096", "compat=0.10,cluster_size=65536", "cluster_size=512,refcount_bits=2"] {
            let path = directory.appendingPathComponent("s.qcow2").path
            try? FileManager.default.removeItem(atPath: path)
            try run(["/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", "-o", options, path, "2M"])
            try run(["/usr/bin/qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 256k", "-c", "write -P 0x12 1M 64k", path])
            try editor(path).create(name: "before")
            try assertClean(path)
            try run(["/usr/bin/qemu-io", "-f", "qcow2", "-c", "write -P 0x22 4k 8k", "-c", "write -z 1M 64k", path])
            try assertClean(path)
            let listing = try run(["/usr/bin/qemu-img", "snapshot", "-l", path]).output
            XCTAssertTrue(listing.contains("before"), listing)
            // The snapshot still holds the old bytes; the image the new ones.
            let saved = directory.appendingPathComponent("saved.raw").path
            try run(["/usr/bin/qemu-img", "convert", "-l", "snapshot.name=before", "-O", "raw", path, saved])
            XCTAssertEqual(try run(["/usr/bin/qemu-io", "-f", "raw", "-c", "read -P 0x11 0 256k", saved]).status, 0)
            XCTAssertEqual(try run(["/usr/bin/qemu-io", "-f", "qcow2", "-c", "read -P 0x22 4k 8k", path]).output.contains("Pattern verification failed"), false)
            try editor(path).apply("before")
            try assertClean(path)
            let verify = try run(["/usr/bin/qemu-io", "-f", "qcow2", "-c", "read -P 0x11 0 256k", "-c", "read -P 0x12 1M 64k", path])
            XCTAssertFalse(verify.output.contains("Pattern verification failed"), "\(options): \(verify.output)")
            try editor(path).delete("before")
            try assertClean(path)
            XCTAssertFalse(try run(["/usr/bin/qemu-img", "snapshot", "-l", path]).output.contains("before"))
            let leaks = try run(["/usr/bin/qemu-img", "check", "--output=json", path]).output
            XCTAssertFalse(leaks.contains("\"leaks\""), "\(options): \(leaks)")
        }
    }

    func testOneBitRefcountsRefuseSnapshotsAndChangeNothing() throws {
        let path = directory.appendingPathComponent("one.qcow2").path
        try run(["/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", "-o", "refcount_bits=1", path, "1M"])
        try run(["/usr/bin/qemu-io", "-f", "qcow2", "-c", "write -P 1 0 64k", path])
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try editor(path).create(name: "s"))
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), before)
    }

    func testQemuSnapshotsAreListedAndDuplicateNamesRefused() throws {
        let path = directory.appendingPathComponent("q.qcow2").path
        try run(["/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", path, "1M"])
        try run(["/usr/bin/qemu-img", "snapshot", "-c", "first", path])
        let edit = try editor(path)
        XCTAssertEqual(edit.list.map(\.name), ["first"])
        XCTAssertThrowsError(try edit.create(name: "first"))
        XCTAssertThrowsError(try edit.apply("missing"))
        try assertClean(path)
    }
}
