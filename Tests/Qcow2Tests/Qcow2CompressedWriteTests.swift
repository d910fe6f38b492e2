import BlockCore
import BlockDrivers
import Foundation
import XCTest

/// Compressed cluster writes, read back by qemu-io and checked by qemu-img.
final class Qcow2CompressedWriteTests: QemuImageTestCase {
    func testCompressedClustersArePackedAndReadable() throws {
        let path = directory.appendingPathComponent("c.qcow2").path
        try run(["/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "1M"])
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
        XCTAssertEqual(try run(["/usr/bin/qemu-img", "check", "-q", path]).status, 0)
        let read = try run(["/usr/bin/qemu-io", "-f", "qcow2", "-c", "read -P 1 0 4k", "-c", "read -P 64 252k 4k", path])
        XCTAssertFalse(read.output.contains("Pattern verification failed"), read.output)
        // 64 tiny compressed clusters share a few host clusters: the file stays small.
        let size = try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int ?? 0
        XCTAssertLessThan(size, 64 * 4096)
    }
}
