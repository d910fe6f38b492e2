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
            try mustRun(["/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", "-o", options, path, "2M"])
            try qemuIO(format: "qcow2", ["write -P 0x11 0 256k", "write -P 0x12 1M 64k"], path)
            try editor(path).create(name: "before")
            try assertClean(path)
            try qemuIO(format: "qcow2", ["write -P 0x22 4k 8k", "write -z 1M 64k"], path)
            try assertClean(path)
            let listing = try mustRun(["/usr/bin/qemu-img", "snapshot", "-l", path])
            XCTAssertTrue(listing.contains("before"), listing)
            // The snapshot still holds the old bytes; the image the new ones.
            let saved = directory.appendingPathComponent("saved.raw").path
            try mustRun(["/usr/bin/qemu-img", "convert", "-l", "snapshot.name=before", "-O", "raw", path, saved])
            try qemuIO(format: "raw", ["read -P 0x11 0 256k", "read -P 0x12 1M 64k"], saved)
            try qemuIO(format: "qcow2", ["read -P 0x22 4k 8k", "read -P 0 1M 64k"], path)
            try editor(path).apply("before")
            try assertClean(path)
            try qemuIO(format: "qcow2", ["read -P 0x11 0 256k", "read -P 0x12 1M 64k"], path)
            try editor(path).delete("before")
            try assertClean(path)
            XCTAssertFalse(try mustRun(["/usr/bin/qemu-img", "snapshot", "-l", path]).contains("before"))
            let leaks = try mustRun(["/usr/bin/qemu-img", "check", "--output=json", path])
            XCTAssertFalse(leaks.contains("\"leaks\""), "\(options): \(leaks)")
        }
    }

    func testOneBitRefcountsRefuseSnapshotsAndChangeNothing() throws {
        let path = directory.appendingPathComponent("one.qcow2").path
        try mustRun(["/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", "-o", "refcount_bits=1", path, "1M"])
        try qemuIO(format: "qcow2", ["write -P 1 0 64k"], path)
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try editor(path).create(name: "s"))
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), before)
    }

    func testQemuSnapshotsAreListedAndDuplicateNamesRefused() throws {
        let path = directory.appendingPathComponent("q.qcow2").path
        try mustRun(["/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", path, "1M"])
        try mustRun(["/usr/bin/qemu-img", "snapshot", "-c", "first", path])
        let edit = try editor(path)
        XCTAssertEqual(edit.list.map(\.name), ["first"])
        XCTAssertThrowsError(try edit.create(name: "first"))
        XCTAssertThrowsError(try edit.apply("missing"))
        try assertClean(path)
    }
}
