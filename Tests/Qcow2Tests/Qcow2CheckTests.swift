import BlockCore
import BlockDrivers
import Foundation
import XCTest

/// Qcow2Check against `qemu-img check` on images damaged on purpose: the same counts, and a repair
/// that qemu-img then finds clean.
final class Qcow2CheckTests: QemuImageTestCase {
    private func qemuCheck(_ path: String) throws -> [String: Any] {
        let (_, output) = try run(["/usr/bin/qemu-img", "check", "--output=json", path])
        return try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any] ?? [:]
    }

    private func image(_ options: String, writes: [String]) throws -> String {
        let path = directory.appendingPathComponent("disk.qcow2").path
        try mustRun(["/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", "-o", options, path, "4M"])
        if !writes.isEmpty {
            try qemuIO(format: "qcow2", writes, path)
        }
        return path
    }

    private func open(_ path: String, readOnly: Bool) throws -> BlockNode {
        let graph = BlockGraph(drivers: Drivers.all)
        return try graph.open(.object([
            "driver": .string("file"), "filename": .string(path), "read-only": .bool(readOnly),
        ]))
    }

    /// Overwrites the 16-bit refcount of host cluster `cluster` (first refcount block only).
    private func setRawRefcount(_ path: String, cluster: Int, to value: UInt16) throws {
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        let header = try handle.read(upToCount: 64) ?? Data()
        let tableOffset = header[48..<56].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        try handle.seek(toOffset: tableOffset)
        let entry = try handle.read(upToCount: 8) ?? Data()
        let block = entry.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        try handle.seek(toOffset: block + UInt64(cluster * 2))
        try handle.write(contentsOf: Data([UInt8(value >> 8), UInt8(value & 0xff)]))
    }

    func testCleanImageIsClean() throws {
        let path = try image("cluster_size=4096", writes: ["write -P 1 0 64k", "write -z 128k 8k"])
        let report = try Qcow2Check.run(file: try open(path, readOnly: true), repair: nil)
        XCTAssertEqual(report.corruptions, 0, report.messages.joined(separator: "\n"))
        XCTAssertEqual(report.leaks, 0, report.messages.joined(separator: "\n"))
        let reference = try qemuCheck(path)
        XCTAssertEqual(Int(report.imageEndOffset), reference["image-end-offset"] as? Int)
        XCTAssertEqual(Int(report.allocatedClusters), reference["allocated-clusters"] as? Int)
    }

    func testLeakIsFoundAndRepairedLikeQemuImg() throws {
        let path = try image("cluster_size=4096", writes: ["write -P 1 0 16k"])
        let end = try qemuCheck(path)["image-end-offset"] as? Int ?? 0
        // A cluster inside the file that nothing references gets refcount 1: a leak.
        try FileHandle(forUpdating: URL(fileURLWithPath: path)).truncate(atOffset: UInt64(end + 16 * 4096))
        try setRawRefcount(path, cluster: end / 4096 + 3, to: 1)
        let reference = try qemuCheck(path)
        let found = try Qcow2Check.run(file: try open(path, readOnly: true), repair: nil)
        XCTAssertEqual(found.leaks, reference["leaks"] as? Int)
        XCTAssertEqual(found.leaks, 1)
        let repaired = try Qcow2Check.run(file: try open(path, readOnly: false), repair: .leaks)
        XCTAssertEqual(repaired.leaksFixed, 1)
        XCTAssertEqual(repaired.leaks, 0)
        XCTAssertEqual(try qemuCheck(path)["leaks"] as? Int ?? 0, 0, "qemu-img finds the repaired image clean")
    }

    func testRefcountTooLowIsACorruptionAndRepairAllFixesIt() throws {
        let path = try image("cluster_size=4096", writes: ["write -P 1 0 16k"])
        // The first data cluster sits after header, L1, refcount table and block: drop its refcount.
        let map = try mustRun(["/usr/bin/qemu-img", "map", "--output=json", path])
        let entries = try JSONSerialization.jsonObject(with: Data(map.utf8)) as? [[String: Any]] ?? []
        let host = entries.first { ($0["data"] as? Bool) == true }?["offset"] as? Int ?? 0
        XCTAssertGreaterThan(host, 0)
        try setRawRefcount(path, cluster: host / 4096, to: 0)
        let reference = try qemuCheck(path)
        let found = try Qcow2Check.run(file: try open(path, readOnly: true), repair: nil)
        XCTAssertEqual(found.corruptions, reference["corruptions"] as? Int, found.messages.joined(separator: "\n"))
        XCTAssertGreaterThan(found.corruptions, 0)
        let repaired = try Qcow2Check.run(file: try open(path, readOnly: false), repair: .all)
        XCTAssertEqual(repaired.corruptions, 0, repaired.messages.joined(separator: "\n"))
        let after = try qemuCheck(path)
        XCTAssertEqual(after["corruptions"] as? Int ?? 0, 0)
        XCTAssertEqual(after["leaks"] as? Int ?? 0, 0)
    }

    func testSnapshotsAreCounted() throws {
        let path = try image("cluster_size=4096", writes: ["write -P 1 0 16k"])
        try mustRun(["/usr/bin/qemu-img", "snapshot", "-c", "s1", path])
        try qemuIO(format: "qcow2", ["write -P 2 0 8k"], path)
        let file = try open(path, readOnly: true)
        let header = try Qcow2Opener.readHeader(file)
        let snapshots = try Qcow2Snapshots.list(file: file, header: header)
        XCTAssertEqual(snapshots.map(\.name), ["s1"])
        let report = try Qcow2Check.run(file: file, repair: nil)
        XCTAssertEqual(report.corruptions + report.leaks, 0, report.messages.joined(separator: "\n"))
    }
}
