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
        let result = try execute(arguments)
        return (result.status, result.output)
    }

    /// Runs a program that must succeed (exit status 0); throws with its output otherwise. Returns
    /// its standard output.
    @discardableResult
    func mustRun(_ arguments: [String]) throws -> String {
        let result = try execute(arguments)
        guard result.status == 0 else {
            throw ToolFailed(arguments: arguments, status: result.status, output: result.output + result.errors)
        }
        return result.output
    }

    /// Runs qemu-io commands on an image; every command must succeed (qemu-io exits non-zero when
    /// one fails, a read pattern mismatch included) and none may print a failure.
    @discardableResult
    func qemuIO(format: String, _ commands: [String], _ path: String) throws -> String {
        let output = try mustRun(["/usr/bin/qemu-io", "-f", format] + commands.flatMap { ["-c", $0] } + [path])
        guard !output.contains("failed"), !output.contains("mismatch") else {
            throw ToolFailed(arguments: ["qemu-io"] + commands + [path], status: 0, output: output)
        }
        return output
    }

    /// A tool exited with a failure.
    struct ToolFailed: Error, CustomStringConvertible {
        let arguments: [String]
        let status: Int32
        let output: String
        var description: String { "\(arguments.joined(separator: " ")) exited \(status):\n\(output)" }
    }

    private func execute(_ arguments: [String]) throws -> (status: Int32, output: String, errors: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: arguments[0])
        process.arguments = Array(arguments.dropFirst())
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        // Standard error is small (messages); read it after standard output, which may be large.
        let data = out.fileHandleForReading.readDataToEndOfFile()
        let errors = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self), String(decoding: errors, as: UTF8.self))
    }
}
