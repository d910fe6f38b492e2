import BlockCore
import BlockDrivers
import Foundation
import XCTest

/// Compressed cluster writes, read back by qemu-io and checked by qemu-img.
final class Qcow2CompressedWriteTests: QemuImageTestCase {
    func testCompressedClustersArePackedAndReadable() throws {
        let path = directory.appendingPathComponent("c.qcow2").path
        try mustRun(["/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "1M"])
        let graph = BlockGraph(drivers: Drivers.all)
        let node = try graph.open(.object([
            "driver": .string("qcow2"), "node-name": .string("c"),
            "file": .object(["driver": .string("file"), "filename": .string(path)]),
        ]))
        let driver = try XCTUnwrap(node.driver as? Qcow2Driver)
        for index in 0..<64 {
            let cluster = [UInt8](repeating: UInt8(index + 1), count: 4096)
            try cluster.withUnsafeBytes { try driver.writeCompressed($0, at: UInt64(index) * 4096) }
        }
        let random = (0..<4096).map { _ in UInt8.random(in: 0...255) }
        try random.withUnsafeBytes { try driver.writeCompressed($0, at: 64 * 4096) }
        try node.flush()
        try graph.remove("c")
        try mustRun(["/usr/bin/qemu-img", "check", "-q", path])
        // Every compressed cluster decompresses to its pattern, and the incompressible one reads back.
        try qemuIO(format: "qcow2", (0..<64).map { "read -P \($0 + 1) \($0 * 4)k 4k" }, path)
        let saved = directory.appendingPathComponent("c.raw").path
        try mustRun(["/usr/bin/qemu-img", "convert", "-O", "raw", path, saved])
        let bytes = try Data(contentsOf: URL(fileURLWithPath: saved))
        XCTAssertEqual([UInt8](bytes[(64 * 4096)..<(65 * 4096)]), random)
        // 64 tiny compressed clusters share a few host clusters: the file stays small.
        let size = try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int ?? 0
        XCTAssertLessThan(size, 64 * 4096)
    }
}
