import NBDProtocol
import XCTest

final class RequestHeaderTests: XCTestCase {
    /// A compact NBD_CMD_WRITE request with FUA, byte for byte as doc/proto.md § Request message lays it out.
    let compactWrite: [UInt8] = [
        0x25, 0x60, 0x95, 0x13,  // NBD_REQUEST_MAGIC
        0x00, 0x01,              // flags: FUA
        0x00, 0x01,              // type: NBD_CMD_WRITE
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,  // cookie
        0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00,  // offset 1 MiB
        0x00, 0x00, 0x10, 0x00,  // length 4096
    ]

    func testDecodesCompactHeader() {
        let decoded = compactWrite.withUnsafeBytes { RequestHeader.decode($0, extended: false) }
        XCTAssertEqual(decoded, .header(
            RequestHeader(flags: 1, type: 1, cookie: 0x0102_0304_0506_0708, offset: 1 << 20, length: 4096), size: 28))
        guard case .header(let header, _) = decoded else { return }
        XCTAssertEqual(header.command, .write)
        XCTAssertEqual(header.commandFlags, .fua)
    }

    func testEveryByteSplitNeedsMoreUntilComplete() {
        for split in 0..<compactWrite.count {
            let decoded = Array(compactWrite[0..<split]).withUnsafeBytes { RequestHeader.decode($0, extended: false) }
            XCTAssertEqual(decoded, .needMore, "split at \(split)")
        }
    }

    func testBadMagicIsReported() {
        var bytes = compactWrite
        bytes[0] = 0x26
        let decoded = bytes.withUnsafeBytes { RequestHeader.decode($0, extended: false) }
        XCTAssertEqual(decoded, .badMagic(0x2660_9513))
    }

    func testCompactMagicIsRejectedOnExtendedConnection() {
        let decoded = compactWrite.withUnsafeBytes { RequestHeader.decode($0, extended: true) }
        XCTAssertEqual(decoded, .badMagic(NBDMagic.request))
    }

    func testExtendedHeaderRoundTripsWith64BitLength() {
        let header = RequestHeader(flags: 0, type: NBDCommand.blockStatus.rawValue, cookie: 7, offset: 1 << 40, length: 5 << 32)
        let bytes = header.encode(extended: true)
        XCTAssertEqual(bytes.count, 32)
        XCTAssertEqual(Array(bytes[0..<4]), [0x21, 0xe4, 0x1c, 0x71])
        XCTAssertEqual(Array(bytes[24..<32]), [0, 0, 0, 5, 0, 0, 0, 0])
        XCTAssertEqual(bytes.withUnsafeBytes { RequestHeader.decode($0, extended: true) }, .header(header, size: 32))
    }

    func testEncodeMatchesVector() {
        let header = RequestHeader(flags: 1, type: 1, cookie: 0x0102_0304_0506_0708, offset: 1 << 20, length: 4096)
        XCTAssertEqual(header.encode(extended: false), compactWrite)
    }
}
