import NBDProtocol
import XCTest

final class OptionMessageTests: XCTestCase {
    func testOptionHeaderVector() {
        let bytes: [UInt8] = [0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54, 0, 0, 0, 7, 0, 0, 0, 0x0b]
        XCTAssertEqual(OptionHeader.decode(bytes), OptionHeader(option: 7, length: 11))
        XCTAssertEqual(OptionHeader(option: 7, length: 11).encode(), bytes)
        var wrong = bytes
        wrong[7] = 0
        XCTAssertNil(OptionHeader.decode(wrong))
    }

    func testOptionReplyVector() {
        let reply = OptionReply(option: 3, type: .ack).encode()
        XCTAssertEqual(reply, [0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0])
        let error = OptionReply.error(.errUnsupported, option: 99, message: "no").encode()
        XCTAssertEqual(Array(error[12..<22]), [0x80, 0, 0, 1, 0, 0, 0, 2, 0x6e, 0x6f])
    }

    func testInfoRequestRoundTripAndLimits() {
        let request = InfoRequest(exportName: "disk0", requests: [InfoType.blockSize.rawValue, InfoType.name.rawValue])
        let data = request.encode()
        XCTAssertEqual(data, [0, 0, 0, 5, 0x64, 0x69, 0x73, 0x6b, 0x30, 0, 2, 0, 3, 0, 1])
        XCTAssertEqual(InfoRequest.decode(data), request)
        XCTAssertNil(InfoRequest.decode(Array(data.dropLast())), "truncated list of info requests")
        XCTAssertNil(InfoRequest.decode(data + [0]), "trailing garbage")
        XCTAssertNil(InfoRequest.decode([0, 0, 0, 9, 0x61]), "name longer than the data")
        XCTAssertNil(InfoRequest.decode([0, 0, 0, 1, 0, 0, 0]), "NUL in the name")
    }

    func testMetaContextRequestRoundTrip() {
        let request = MetaContextRequest(exportName: "", queries: ["base:allocation", "qemu:"])
        XCTAssertEqual(MetaContextRequest.decode(request.encode()), request)
        XCTAssertNil(MetaContextRequest.decode([0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9]))
    }
}
