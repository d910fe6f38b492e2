#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import BlockDrivers
import XCTest

/// The `file` protocol driver on a regular file in /dev/shm (tmpfs: holes are reported and punched).
final class FileDriverTests: XCTestCase {
    private var path = ""

    override func setUp() {
        path = "/dev/shm/blockd-filedriver-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = Glibc.open(path, O_CREAT | O_RDWR | O_TRUNC, 0o600)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(ftruncate(fd, 1 << 20), 0)
        close(fd)
    }

    override func tearDown() { unlink(path) }

    private func open(discard: Bool = false, readOnly: Bool = false) throws -> FileDriver {
        var common = CommonNodeOptions()
        common.discardUnmap = discard
        common.readOnly = readOnly
        return try FileDriver(driverName: "file", path: path, common: common)
    }

    private func read(_ driver: FileDriver, at offset: UInt64, _ count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0xcc, count: count)
        try bytes.withUnsafeMutableBytes { try driver.read(into: $0, at: offset) }
        return bytes
    }

    func testWritesAreReadBackAndSeenThroughTheMapping() throws {
        let driver = try open()
        defer { driver.close() }
        let data = (0..<8192).map { UInt8(truncatingIfNeeded: $0 * 31) }
        try data.withUnsafeBytes { try driver.write($0, at: 12288, fua: true) }
        XCTAssertEqual(try read(driver, at: 12288, 8192), data)
        let mapped = try XCTUnwrap(driver.mappedBytes(at: 12288, length: 8192))
        XCTAssertEqual(Array(UnsafeRawBufferPointer(start: mapped, count: 8192)), data, "the mapping reflects completed writes")
        XCTAssertNil(driver.mappedBytes(at: (1 << 20) - 100, length: 200), "nothing past the end is mapped")
        try driver.flush()
    }

    func testAFileThatShrankReadsAsZeroesPastItsNewEnd() throws {
        let driver = try open()
        defer { driver.close() }
        try [UInt8](repeating: 9, count: 4096).withUnsafeBytes { try driver.write($0, at: 0, fua: false) }
        XCTAssertEqual(truncate(path, 1000), 0)
        XCTAssertEqual(try read(driver, at: 0, 4096), [UInt8](repeating: 9, count: 1000) + [UInt8](repeating: 0, count: 3096))
    }

    func testBlockStatusSeesHolesAndDataAndADiscardForgetsKnownData() throws {
        let driver = try open(discard: true)
        defer { driver.close() }
        XCTAssertEqual(try driver.blockStatus(at: 0, length: 1 << 20).first?.hole, true, "a new sparse file is a hole")
        try [UInt8](repeating: 1, count: 65536).withUnsafeBytes { try driver.write($0, at: 65536, fua: false) }
        let data = try driver.blockStatus(at: 65536, length: 65536)
        XCTAssertEqual(data.first?.hole, false)
        XCTAssertEqual(data.first?.length, 65536)
        XCTAssertEqual(try driver.blockStatus(at: 0, length: 65536).first?.hole, true, "the range before the data is still a hole")
        try driver.discard(at: 65536, length: 65536)
        XCTAssertEqual(try driver.blockStatus(at: 65536, length: 65536).first?.hole, true, "a discard punches a hole that block status sees")
        XCTAssertEqual(try read(driver, at: 65536, 16), [UInt8](repeating: 0, count: 16))
    }

    func testAZeroWriteThatMayUnmapLeavesZeroes() throws {
        let driver = try open(discard: true)
        defer { driver.close() }
        try [UInt8](repeating: 5, count: 8192).withUnsafeBytes { try driver.write($0, at: 0, fua: false) }
        try driver.writeZeroes(at: 4096, length: 4096, flags: [.mayUnmap])
        XCTAssertEqual(try read(driver, at: 0, 8192), [UInt8](repeating: 5, count: 4096) + [UInt8](repeating: 0, count: 4096))
    }

    func testResizeGrowsWithZeroesAndChangesTheLength() throws {
        let driver = try open()
        defer { driver.close() }
        try driver.resize(to: 2 << 20)
        XCTAssertEqual(driver.length, 2 << 20)
        var info = stat()
        XCTAssertEqual(stat(path, &info), 0)
        XCTAssertEqual(info.st_size, 2 << 20)
        XCTAssertEqual(try read(driver, at: (2 << 20) - 16, 16), [UInt8](repeating: 0, count: 16))
    }

    func testOpenFailuresNameThePath() {
        unlink(path)
        XCTAssertThrowsError(try open()) {
            XCTAssertEqual("\($0)", "Could not open '\(path)': No such file or directory")
        }
        XCTAssertThrowsError(try FileDriver(driverName: "file", path: "/dev/shm", common: CommonNodeOptions())) {
            XCTAssertTrue("\($0)".contains("'/dev/shm'"), "\($0)")
        }
    }

    func testAReadOnlyFileRefusesWrites() throws {
        let driver = try open(readOnly: true)
        defer { driver.close() }
        XCTAssertThrowsError(try [UInt8](repeating: 1, count: 1).withUnsafeBytes { try driver.write($0, at: 0, fua: false) }) {
            XCTAssertEqual(($0 as? BlockError)?.errno, EBADF)
        }
    }
}
