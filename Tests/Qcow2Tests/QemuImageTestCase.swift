import Foundation
import XCTest

/// A test case that works on images in a fresh temporary directory with QEMU's tools
/// (skipped, loudly, where qemu-img is not installed).
class QemuImageTestCase: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/qemu-img") else {
            // Under CI (CI=1 from .ci/run) a missing client is a failure, never a silent skip.
            if ProcessInfo.processInfo.environment["CI"] != nil { throw MissingTool(name: "qemu-img") }
            throw XCTSkip("SKIPPED: qemu-img is not installed")
        }
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("qcow2tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    /// A tool the tests need is not installed where it must be.
    struct MissingTool: Error, CustomStringConvertible {
        let name: String
        var description: String { "\(name) is required under CI (scripts/setup-deps installs it)" }
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
