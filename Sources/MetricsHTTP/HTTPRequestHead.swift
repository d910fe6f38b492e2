/// The start of an HTTP/1.x request as the metrics endpoint reads it: the request line, once the
/// blank line that ends the header block has arrived (RFC 9112 § 2.2, § 3). Headers are not kept:
/// the endpoint answers the same whatever they say.
public struct HTTPRequestHead: Sendable, Equatable {
    /// The method token (`GET`).
    public var method: String
    /// The request target without its query string (`/metrics`).
    public var path: String
    /// The version token (`HTTP/1.1`).
    public var version: String

    /// Creates a head from its parts.
    public init(method: String, path: String, version: String) {
        self.method = method
        self.path = path
        self.version = version
    }

    /// What the bytes received so far amount to.
    public enum Parse: Sendable, Equatable {
        /// The header block is not complete yet.
        case incomplete
        /// A complete, well-formed head.
        case head(HTTPRequestHead)
        /// A malformed request line (answered 400).
        case malformed
    }

    /// Looks for the end of the header block in `bytes` and parses the request line before it.
    public static func parse(_ bytes: [UInt8]) -> Parse {
        guard let end = headerEnd(bytes) else { return .incomplete }
        let firstLineEnd = bytes[..<end].firstIndex(of: UInt8(ascii: "\n")) ?? end
        var line = bytes[..<firstLineEnd]
        if line.last == UInt8(ascii: "\r") { line = line.dropLast() }
        let parts = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty,
              parts[0].allSatisfy(isTokenByte), parts[1].allSatisfy({ $0 > 0x20 && $0 < 0x7f }),
              parts[2].starts(with: Array("HTTP/1.".utf8)), parts[2].count == 8
        else { return .malformed }
        let target = String(decoding: parts[1], as: UTF8.self)
        let path = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? target
        return .head(HTTPRequestHead(method: String(decoding: parts[0], as: UTF8.self), path: path,
                                     version: String(decoding: parts[2], as: UTF8.self)))
    }

    /// The index of the blank line that ends the header block (CRLF CRLF, or bare LF LF), if present.
    static func headerEnd(_ bytes: [UInt8]) -> Int? {
        var index = 0
        while index < bytes.count {
            if bytes[index] == UInt8(ascii: "\n") {
                if index + 1 < bytes.count && bytes[index + 1] == UInt8(ascii: "\n") { return index }
                if index + 2 < bytes.count && bytes[index + 1] == UInt8(ascii: "\r") && bytes[index + 2] == UInt8(ascii: "\n") { return index }
            }
            index += 1
        }
        return nil
    }

    /// RFC 9110 § 5.6.2 tchar, restricted to the letters methods use.
    private static func isTokenByte(_ byte: UInt8) -> Bool {
        (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z")) || (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z"))
            || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_")
    }
}
