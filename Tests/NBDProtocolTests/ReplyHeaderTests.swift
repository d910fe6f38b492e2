import NBDProtocol
import XCTest

final class ReplyHeaderTests: XCTestCase {
    private func bytes(_ size: Int, _ write: (UnsafeMutableRawPointer) -> Void) -> [UInt8] {
        var buffer = [UInt8](repeating: 0xff, count: size)
        buffer.withUnsafeMutableBytes { write($0.baseAddress!) }
        return buffer
    }

    func testSimpleReply() {
        let reply = bytes(16) { ReplyHeader.writeSimple(error: 22, cookie: 0xabcd, to: $0) }
        XCTAssertEqual(reply, [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 0xab, 0xcd])
    }

    func testStructuredChunkHeader() {
        let reply = bytes(20) {
            ReplyHeader.writeChunk(style: .structured, flags: .done, type: .offsetData, cookie: 1, offset: 99, payloadLength: 4104, to: $0)
        }
        XCTAssertEqual(reply, [0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0x10, 0x08])
    }

    func testExtendedChunkHeaderEchoesOffset() {
        let reply = bytes(32) {
            ReplyHeader.writeChunk(style: .extended, flags: .done, type: .error, cookie: 2, offset: 0x1000, payloadLength: 6, to: $0)
        }
        XCTAssertEqual(Array(reply[0..<8]), [0x6e, 0x8a, 0x27, 0x8c, 0, 1, 0x80, 0x01])
        XCTAssertEqual(Array(reply[16..<24]), [0, 0, 0, 0, 0, 0, 0x10, 0])
        XCTAssertEqual(Array(reply[24..<32]), [0, 0, 0, 0, 0, 0, 0, 6])
    }
}
