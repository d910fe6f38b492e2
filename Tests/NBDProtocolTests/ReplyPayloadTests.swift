import NBDProtocol
import XCTest

/// The reply payloads as byte vectors from doc/proto.md § Structured reply chunk message and
/// § Structured reply types.
final class ReplyPayloadTests: XCTestCase {
    /// The bytes `write` puts into a buffer, which must be exactly the size it returns.
    private func encoded(_ write: (UnsafeMutableRawPointer) -> Int) -> [UInt8] {
        var buffer = [UInt8](repeating: 0xee, count: 256)
        let size = buffer.withUnsafeMutableBytes { write($0.baseAddress!) }
        XCTAssertTrue(buffer[size...].allSatisfy { $0 == 0xee }, "nothing written past the returned size")
        return Array(buffer[..<size])
    }

    func testStatusReplyIsSimpleForCommandsWithoutDataInStructuredMode() {
        let reply = encoded { StatusReply.write(style: .structured, needsChunk: false, error: 28, cookie: 3, offset: 0, to: $0) }
        XCTAssertEqual(reply, [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 28, 0, 0, 0, 0, 0, 0, 0, 3])
    }

    func testStatusReplySuccessIsANoneChunkFlaggedDone() {
        let reply = encoded { StatusReply.write(style: .structured, needsChunk: true, error: 0, cookie: 4, offset: 0, to: $0) }
        XCTAssertEqual(reply, [0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0])
    }

    func testStatusReplyErrorIsAnErrorChunkWithAnEmptyMessage() {
        let reply = encoded { StatusReply.write(style: .structured, needsChunk: true, error: 5, cookie: 4, offset: 0, to: $0) }
        XCTAssertEqual(reply, [0x66, 0x8e, 0x33, 0xef, 0, 1, 0x80, 0x01, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 6,
                               0, 0, 0, 5, 0, 0])
        XCTAssertEqual(reply.count, StatusReply.maxSize(.structured))
    }

    func testExtendedStatusReplyIsAlwaysAChunkAndEchoesTheOffset() {
        let reply = encoded { StatusReply.write(style: .extended, needsChunk: false, error: 22, cookie: 1, offset: 0x200, to: $0) }
        XCTAssertEqual(reply, [0x6e, 0x8a, 0x27, 0x8c, 0, 1, 0x80, 0x01, 0, 0, 0, 0, 0, 0, 0, 1,
                               0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 22, 0, 0])
        XCTAssertEqual(reply.count, StatusReply.maxSize(.extended))
    }

    func testSimpleReadPrefixIsASimpleReply() {
        let prefix = encoded { ReadReply.writeDataPrefix(style: .simple, cookie: 9, requestOffset: 0, dataOffset: 0, count: 512, to: $0) }
        XCTAssertEqual(prefix, [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9])
        XCTAssertEqual(prefix.count, ReadReply.prefixSize(.simple))
    }

    func testOffsetDataPrefixCountsTheOffsetInItsLength() {
        let prefix = encoded {
            ReadReply.writeDataPrefix(style: .structured, flags: [], cookie: 2, requestOffset: 0x1000, dataOffset: 0x3000, count: 0x200, to: $0)
        }
        XCTAssertEqual(prefix, [0x66, 0x8e, 0x33, 0xef, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0x02, 0x08,
                                0, 0, 0, 0, 0, 0, 0x30, 0])
        XCTAssertEqual(prefix.count, ReadReply.prefixSize(.structured))
    }

    func testOffsetHoleChunk() {
        let chunk = encoded {
            ReadReply.writeHole(style: .structured, cookie: 2, requestOffset: 0, holeOffset: 0x10000, length: 0x8000, to: $0)
        }
        XCTAssertEqual(chunk, [0x66, 0x8e, 0x33, 0xef, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 12,
                               0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0x80, 0])
    }

    func testMarkDoneSetsOnlyTheDoneFlag() {
        var chunk = encoded {
            ReadReply.writeHole(style: .extended, cookie: 2, requestOffset: 7, holeOffset: 7, length: 1, to: $0)
        }
        chunk.withUnsafeMutableBytes { ReadReply.markDone(chunkAt: $0.baseAddress!) }
        XCTAssertEqual(Array(chunk[0..<8]), [0x6e, 0x8a, 0x27, 0x8c, 0, 1, 0, 2])
        XCTAssertEqual(Array(chunk[16..<32]), [0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 12])
    }

    func testCompactBlockStatusChunk() {
        let chunk = encoded { base in
            var at = BlockStatusReply.writeHeader(style: .structured, flags: .done, cookie: 5, offset: 0, context: 1, count: 2, to: base)
            at = BlockStatusReply.writeDescriptor(style: .structured, length: 0x10000, flags: 3, to: base, at: at)
            return BlockStatusReply.writeDescriptor(style: .structured, length: 0x200, flags: 0, to: base, at: at)
        }
        XCTAssertEqual(chunk, [0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 20,
                               0, 0, 0, 1,
                               0, 1, 0, 0, 0, 0, 0, 3,
                               0, 0, 2, 0, 0, 0, 0, 0])
        XCTAssertEqual(chunk.count, ReplyHeader.structuredSize + BlockStatusReply.payloadSize(.structured, count: 2))
    }

    func testExtendedBlockStatusChunkHasACountAnd64BitDescriptors() {
        let chunk = encoded { base in
            let at = BlockStatusReply.writeHeader(style: .extended, flags: [], cookie: 6, offset: 0x400, context: 2, count: 1, to: base)
            return BlockStatusReply.writeDescriptor(style: .extended, length: 1 << 32, flags: 2, to: base, at: at)
        }
        XCTAssertEqual(chunk, [0x6e, 0x8a, 0x27, 0x8c, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 6,
                               0, 0, 0, 0, 0, 0, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 24,
                               0, 0, 0, 2, 0, 0, 0, 1,
                               0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2])
        XCTAssertEqual(chunk.count, ReplyHeader.extendedSize + BlockStatusReply.payloadSize(.extended, count: 1))
    }
}
