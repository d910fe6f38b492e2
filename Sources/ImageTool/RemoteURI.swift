import BlockCore
import JSON
import LogOptionsClock

/// Image names that are not files: NBD URIs (`nbd://HOST[:PORT]/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`)
/// and URLs of the read-only curl drivers (`http://`, `https://`, `ftp://`, `ftps://`, `tftp://`),
/// turned into the protocol node that opens them, as qemu-img does.
public enum RemoteURI {
    /// The URL schemes of the curl drivers, which are also their driver names.
    public static let curlSchemes = ["http", "https", "ftp", "ftps", "tftp"]

    /// True when `name` is a URI blockimg opens over the network rather than a file name.
    public static func isRemote(_ name: String) -> Bool {
        guard let scheme = scheme(of: name) else { return false }
        return scheme.hasPrefix("nbd") || curlSchemes.contains(scheme)
    }

    /// True for URIs of read-only drivers (the curl family).
    public static func isReadOnly(_ name: String) -> Bool {
        scheme(of: name).map { curlSchemes.contains($0) } ?? false
    }

    static func scheme(of name: String) -> String? {
        guard let colon = name.firstRange(of: "://") else { return nil }
        let scheme = name[..<colon.lowerBound].lowercased()
        guard !scheme.isEmpty, scheme.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "+" }) else { return nil }
        return scheme
    }

    /// The protocol node definition for a remote name.
    public static func definition(_ name: String, readOnly: Bool) throws(ImageToolError) -> [String: OptionValue] {
        guard let scheme = scheme(of: name) else { throw ImageToolError("'\(name)' is not a URI") }
        if curlSchemes.contains(scheme) {
            return ["driver": .string(scheme), "url": .string(name), "read-only": .bool(true)]
        }
        var node: [String: OptionValue] = ["driver": .string("nbd"), "read-only": .bool(readOnly)]
        let rest = String(name[name.index(name.firstRange(of: "://")!.upperBound, offsetBy: 0)...])
        let (location, query) = split(rest, at: "?")
        let (authority, path) = split(location, at: "/")
        let export = percentDecoded(path ?? "")
        var parameters: [String: String] = [:]
        for pair in (query ?? "").split(separator: "&") {
            let (key, value) = split(String(pair), at: "=")
            parameters[key] = percentDecoded(value ?? "")
        }
        switch scheme {
        case "nbd", "nbd+tcp":
            guard !authority.isEmpty else { throw ImageToolError("\(name): an nbd:// URI needs a host") }
            var host = authority
            var port = "10809"
            if authority.hasPrefix("["), let close = authority.firstIndex(of: "]") {
                host = String(authority[authority.index(after: authority.startIndex)..<close])
                let after = authority[authority.index(after: close)...]
                if after.hasPrefix(":") { port = String(after.dropFirst()) }
            } else if let colon = authority.lastIndex(of: ":") {
                host = String(authority[..<colon])
                port = String(authority[authority.index(after: colon)...])
            }
            node["server"] = .object(["type": .string("inet"), "host": .string(host), "port": .string(port)])
        case "nbd+unix":
            guard authority.isEmpty else { throw ImageToolError("\(name): an nbd+unix:// URI has no host (nbd+unix:///EXPORT?socket=PATH)") }
            guard let socket = parameters["socket"], !socket.isEmpty else {
                throw ImageToolError("\(name): an nbd+unix:// URI needs ?socket=PATH")
            }
            node["server"] = .object(["type": .string("unix"), "path": .string(socket)])
        case "nbds", "nbds+unix", "nbds+tcp":
            throw ImageToolError("\(name): NBD over TLS is not supported yet")
        default:
            throw ImageToolError("\(name): unknown URI scheme '\(scheme)'")
        }
        node["export"] = .string(export)
        return node
    }

    private static func split(_ text: String, at separator: Character) -> (String, String?) {
        guard let index = text.firstIndex(of: separator) else { return (text, nil) }
        return (String(text[..<index]), String(text[text.index(after: index)...]))
    }

    /// Decodes %XX escapes.
    static func percentDecoded(_ text: String) -> String {
        var bytes: [UInt8] = []
        var utf8 = Array(text.utf8)[...]
        while let byte = utf8.popFirst() {
            if byte == UInt8(ascii: "%"), utf8.count >= 2,
               let value = UInt8(String(decoding: utf8.prefix(2), as: UTF8.self), radix: 16) {
                bytes.append(value)
                utf8 = utf8.dropFirst(2)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
