/// A JSON parser producing `JSONValue`s with QEMU's extensions and wording: strings may also be
/// single-quoted (QEMU's JSON parser takes `'text'`, with `\'` as an escape), errors say what QEMU's
/// parser says ("expecting value", "missing : in object pair", ...). Integers stay exact, duplicate
/// keys are errors, `\u0000` is refused, and nesting is bounded (`maxDepth`) so that hostile input
/// cannot exhaust the stack of the (small-stacked) thread that parses it.
struct JSONParser {
    private let bytes: [UInt8]
    private var position = 0
    private var depth = 0
    /// Deepest nesting of objects and arrays accepted; the recursion is two frames per level.
    static let maxDepth = 64

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    /// Parses one value followed only by white space.
    mutating func parseDocument() throws(JSONError) -> JSONValue {
        let value = try parseValue()
        skipSpace()
        guard position == bytes.count else { throw error("unexpected text after the JSON value") }
        return value
    }

    private func error(_ reason: String) -> JSONError {
        JSONError(reason: reason, offset: position)
    }

    private var current: UInt8? { position < bytes.count ? bytes[position] : nil }

    private mutating func skipSpace() {
        while let byte = current, JSONParser.isSpace(byte) { position += 1 }
    }

    private static func isSpace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0a || byte == 0x0d
    }

    private static func isLowercaseLetter(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte)
    }

    private mutating func parseValue() throws(JSONError) -> JSONValue {
        skipSpace()
        guard let byte = current else { throw error("premature EOI") }
        switch byte {
        case UInt8(ascii: "{"): return try parseObject()
        case UInt8(ascii: "["): return try parseArray()
        case UInt8(ascii: "\""), UInt8(ascii: "'"): return .string(try parseString())
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
        case _ where JSONParser.isLowercaseLetter(byte): return try parseKeyword()
        default: throw error("expecting value")
        }
    }

    /// A keyword is a run of lowercase letters, as QEMU's lexer takes it; only three are values.
    private mutating func parseKeyword() throws(JSONError) -> JSONValue {
        let start = position
        while let byte = current, JSONParser.isLowercaseLetter(byte) { position += 1 }
        let word = String(decoding: bytes[start..<position], as: UTF8.self)
        switch word {
        case "true": return .bool(true)
        case "false": return .bool(false)
        case "null": return .null
        default: throw error("invalid keyword '\(word)'")
        }
    }

    private mutating func enter() throws(JSONError) {
        depth += 1
        guard depth <= JSONParser.maxDepth else { throw error("nesting deeper than \(JSONParser.maxDepth)") }
    }

    private mutating func parseObject() throws(JSONError) -> JSONValue {
        try enter()
        defer { depth -= 1 }
        position += 1
        var members: [String: JSONValue] = [:]
        skipSpace()
        if current == UInt8(ascii: "}") {
            position += 1
            return .object(members)
        }
        while true {
            skipSpace()
            guard case .string(let key) = try parseValue() else { throw error("key is not a string in object") }
            skipSpace()
            guard current == UInt8(ascii: ":") else { throw error("missing : in object pair") }
            position += 1
            let value = try parseValue()
            guard members[key] == nil else { throw error("duplicate key") }
            members[key] = value
            skipSpace()
            guard let byte = current else { throw error("premature EOI") }
            position += 1
            if byte == UInt8(ascii: ",") { continue }
            if byte == UInt8(ascii: "}") { return .object(members) }
            throw error("expected separator in dict")
        }
    }

    private mutating func parseArray() throws(JSONError) -> JSONValue {
        try enter()
        defer { depth -= 1 }
        position += 1
        var items: [JSONValue] = []
        skipSpace()
        if current == UInt8(ascii: "]") {
            position += 1
            return .array(items)
        }
        while true {
            items.append(try parseValue())
            skipSpace()
            guard let byte = current else { throw error("premature EOI") }
            position += 1
            if byte == UInt8(ascii: ",") { continue }
            if byte == UInt8(ascii: "]") { return .array(items) }
            throw error("expected separator in list")
        }
    }

    /// A string between double or single quotes.
    private mutating func parseString() throws(JSONError) -> String {
        let quote = bytes[position]
        position += 1
        var scalars = String.UnicodeScalarView()
        var run: [UInt8] = []
        func flush(_ run: inout [UInt8], into scalars: inout String.UnicodeScalarView) -> Bool {
            guard !run.isEmpty else { return true }
            guard let text = String(validating: run, as: UTF8.self) else { return false }
            scalars.append(contentsOf: text.unicodeScalars)
            run.removeAll(keepingCapacity: true)
            return true
        }
        while position < bytes.count {
            let byte = bytes[position]
            position += 1
            switch byte {
            case quote:
                guard flush(&run, into: &scalars) else { throw error("invalid UTF-8 sequence in string") }
                return String(scalars)
            case UInt8(ascii: "\\"):
                guard flush(&run, into: &scalars) else { throw error("invalid UTF-8 sequence in string") }
                guard position < bytes.count else { break }
                let escape = bytes[position]
                position += 1
                switch escape {
                case UInt8(ascii: "\""): scalars.append("\"")
                case UInt8(ascii: "'"): scalars.append("'")
                case UInt8(ascii: "\\"): scalars.append("\\")
                case UInt8(ascii: "/"): scalars.append("/")
                case UInt8(ascii: "b"): scalars.append("\u{08}")
                case UInt8(ascii: "f"): scalars.append("\u{0c}")
                case UInt8(ascii: "n"): scalars.append("\n")
                case UInt8(ascii: "r"): scalars.append("\r")
                case UInt8(ascii: "t"): scalars.append("\t")
                case UInt8(ascii: "u"): scalars.append(try parseUnicodeEscape())
                default: throw error("invalid escape sequence in string")
                }
            case 0..<0x20:
                throw error("control character in string")
            default:
                run.append(byte)
            }
        }
        throw error("premature EOI")
    }

    /// The character of a `\uXXXX` escape (the `\u` already read), a surrogate pair joined.
    /// Errors name the escape as QEMU does: `\ud83d is not a valid Unicode character`.
    private mutating func parseUnicodeEscape() throws(JSONError) -> Unicode.Scalar {
        let escapeStart = position - 2
        func invalid(_ parser: JSONParser, from start: Int) -> JSONError {
            let text = String(decoding: parser.bytes[start..<min(parser.position, parser.bytes.count)], as: UTF8.self)
            return parser.error("\(text) is not a valid Unicode character")
        }
        guard let high = hex4() else { throw invalid(self, from: escapeStart) }
        var code = high
        if (0xdc00..<0xe000).contains(high) { throw invalid(self, from: escapeStart) }
        if (0xd800..<0xdc00).contains(high) {
            let highEnd = position
            guard bytes.count - position >= 2, bytes[position] == UInt8(ascii: "\\"), bytes[position + 1] == UInt8(ascii: "u") else {
                throw error("\(String(decoding: bytes[escapeStart..<highEnd], as: UTF8.self)) is not a valid Unicode character")
            }
            position += 2
            guard let low = hex4(), (0xdc00..<0xe000).contains(low) else {
                throw error("\(String(decoding: bytes[escapeStart..<highEnd], as: UTF8.self)) is not a valid Unicode character")
            }
            code = 0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00)
        }
        // A NUL would cut the string short wherever it becomes a C string (a file name).
        guard code != 0, let scalar = Unicode.Scalar(code) else { throw invalid(self, from: escapeStart) }
        return scalar
    }

    /// Four hex digits, or nil with `position` just past the first byte that is not one.
    private mutating func hex4() -> UInt32? {
        var value: UInt32 = 0
        for _ in 0..<4 {
            guard position < bytes.count else { return nil }
            let byte = bytes[position]
            position += 1
            guard let digit = Character(Unicode.Scalar(byte)).hexDigitValue else { return nil }
            value = value * 16 + UInt32(digit)
        }
        return value
    }

    private mutating func parseNumber() throws(JSONError) -> JSONValue {
        let start = position
        var isInteger = true
        if current == UInt8(ascii: "-") { position += 1 }
        while let byte = current {
            if (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) {
                position += 1
            } else if byte == UInt8(ascii: ".") || byte == UInt8(ascii: "e") || byte == UInt8(ascii: "E")
                        || ((byte == UInt8(ascii: "+") || byte == UInt8(ascii: "-")) && position > start) {
                isInteger = false
                position += 1
            } else {
                break
            }
        }
        let text = String(decoding: bytes[start..<position], as: UTF8.self)
        guard text != "-" else { throw error("expecting value") }
        if isInteger, let value = Int64(text) { return .integer(value) }
        if isInteger, let value = UInt64(text) { return .double(Double(value)) }
        guard let value = Double(text) else { throw error("invalid number '\(text)'") }
        return .double(value)
    }
}
