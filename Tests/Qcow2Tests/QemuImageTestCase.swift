import Foundation
import XCTest

/// A test case that works on images in a fresh temporary directory with QEMU's tools
/// (skipped, loudly, where qemu-img is not installed).
class QemuImageTestCase: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/qemu-img") else {
            throw XCTSkip("SKIPPED: qemu-img is not installed")
        }
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("qcow2tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        if let directory { try? FileManager.default.removeItem(at: directory) }
    }

    /// Runs a program to completion; its exit status and standard output (standard error is kept apart).
    @discardableResult
    func run(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: arguments[0])
        process.arguments = Array(arguments.dropFirst())
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}
