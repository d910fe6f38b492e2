import MetricsHTTP
import XCTest

final class HTTPRequestHeadTests: XCTestCase {
    private func parse(_ text: String) -> HTTPRequestHead.Parse { HTTPRequestHead.parse(Array(text.utf8)) }

    func testCompleteGet() {
        XCTAssertEqual(parse("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"),
                       .head(HTTPRequestHead(method: "GET", path: "/metrics", version: "HTTP/1.1")))
    }

    func testQueryStringIsDropped() {
        XCTAssertEqual(parse("GET /metrics?name[]=x HTTP/1.0\r\n\r\n"),
                       .head(HTTPRequestHead(method: "GET", path: "/metrics", version: "HTTP/1.0")))
    }

    func testBareLineFeeds() {
        XCTAssertEqual(parse("POST /x HTTP/1.1\nHost: y\n\n"), .head(HTTPRequestHead(method: "POST", path: "/x", version: "HTTP/1.1")))
    }

    func testIncompleteAtEveryPrefix() {
        let request = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        for length in 0..<(request.utf8.count - 1) {
            XCTAssertEqual(HTTPRequestHead.parse(Array(request.utf8.prefix(length))), .incomplete, "prefix \(length)")
        }
    }

    func testMalformedLines() {
        for line in ["GET /metrics\r\n\r\n", "GET  /metrics HTTP/1.1\r\n\r\n", "GET /metrics HTTP/2.0\r\n\r\n",
                     "G\u{1}T /metrics HTTP/1.1\r\n\r\n", "GET /met rics HTTP/1.1\r\n\r\n", "\r\n\r\n"] {
            XCTAssertEqual(parse(line), .malformed, line)
        }
    }
}
