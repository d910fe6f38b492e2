/// Cuts a byte stream into whole top-level JSON texts (as QMP sends them, one after another),
/// without parsing them, in bounded memory, the way QEMU's JSON lexer and streamer do
/// (qobject/json-lexer.c, json-streamer.c; docs/interop/qmp-spec):
///
/// - The input is cut into tokens: structural characters, strings in double or single quotes,
///   numbers, keywords (runs of lowercase letters). A top-level value ends with the token that
///   closes its last brace or bracket; a token outside any value (`123`, `abc`, `"text"`, a stray
///   `}` or `,`) is a value of its own, which the parser then answers ("QMP input must be a JSON
///   object", "invalid keyword 'abc'", "expecting value").
/// - A byte no token may take (0xFE, 0xFF, a control character other than white space, a control
///   character inside a string, a capital letter, a digit after a leading zero...) is a lexical
///   error: it is reported with the token it broke (`stray '01'`) and whatever value was being
///   collected is dropped. Clients send 0xFF to force this reset. Until the next structural or
///   control character the input is then skipped, as QEMU's lexer resynchronises.
/// - A value longer than `maxLength` bytes or nested deeper than `maxDepth` is reported once and
///   then skipped to its end (or to a reset byte) without being kept. A token outside any value is
///   kept up to `maxScalarLength` bytes only: a megabyte of letters costs no megabyte of memory.
///
/// After a reported error, reset bytes are taken silently until the input resynchronises, so that
/// `0xFF 0xFF` or `0xFF\n` is answered once, and 0xFF ends a value already reported without
/// another answer.
public struct JSONStreamSplitter: Sendable {
    /// What feeding bytes produced.
    public enum Piece: Sendable, Equatable {
        /// One complete JSON text (an object or array, or a token outside any), as bytes.
        case value([UInt8])
        /// Input that was dropped, and why.
        case error(JSONStreamError)
    }

    /// Where the lexer is inside the current token.
    private enum Token: Sendable {
        /// Between tokens.
        case none
        /// Inside a string opened by `quote`; `escaped` right after a backslash.
        case string(quote: UInt8, escaped: Bool)
        /// Inside a number.
        case number(NumberPart)
        /// Inside a keyword.
        case keyword
    }

    /// The part of a JSON number the lexer is in (RFC 8259's grammar, as QEMU's lexer follows it).
    private enum NumberPart: Sendable {
        case sign, zero, integer, point, fraction, exponent, exponentSign, exponentDigits

        /// Whether the number may end here.
        var isComplete: Bool {
            switch self {
            case .zero, .integer, .fraction, .exponentDigits: return true
            case .sign, .point, .exponent, .exponentSign: return false
            }
        }

        /// The part after `byte`; nil if `byte` ends the number (or breaks it, when not complete).
        func next(_ byte: UInt8) -> NumberPart? {
            let digit = (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
            let exponentMark = byte == UInt8(ascii: "e") || byte == UInt8(ascii: "E")
            switch self {
            case .sign: return byte == UInt8(ascii: "0") ? .zero : digit ? .integer : nil
            case .zero: return byte == UInt8(ascii: ".") ? .point : exponentMark ? .exponent : nil
            case .integer: return digit ? .integer : byte == UInt8(ascii: ".") ? .point : exponentMark ? .exponent : nil
            case .point, .fraction: return digit ? .fraction : (self == .fraction && exponentMark) ? .exponent : nil
            case .exponent:
                return digit ? .exponentDigits : (byte == UInt8(ascii: "+") || byte == UInt8(ascii: "-")) ? .exponentSign : nil
            case .exponentSign, .exponentDigits: return digit ? .exponentDigits : nil
            }
        }
    }

    /// Longest value kept; a longer one is reported and dropped.
    public let maxLength: Int
    /// Deepest nesting of objects and arrays kept (QEMU's `MAX_NESTING`).
    public let maxDepth: Int
    /// Longest token kept outside any value (a request is an object: such a token is only answered).
    public static let maxScalarLength = 4096
    private var buffer: [UInt8] = []
    /// Where the current token starts in `buffer` (for the text of a lexical error).
    private var tokenStart = 0
    private var depth = 0
    private var token = Token.none
    /// False while skipping the rest of a value that was already reported.
    private var keeping = true
    /// True after an error, until the next structural character or control character that is not a reset byte.
    private var recovering = false

    /// Creates a splitter that keeps values of up to `maxLength` bytes nested up to `maxDepth` deep.
    public init(maxLength: Int = 16 << 20, maxDepth: Int = 1024) {
        self.maxLength = maxLength
        self.maxDepth = maxDepth
    }

    /// The bytes held for the value being collected (what the splitter costs in memory).
    public var bufferedCount: Int { buffer.count }

    /// Feeds bytes; returns the pieces completed by them.
    public mutating func feed(_ bytes: some Sequence<UInt8>) -> [Piece] {
        var pieces: [Piece] = []
        if bytes.withContiguousStorageIfAvailable({ scan($0, into: &pieces) }) == nil {
            Array(bytes).withUnsafeBufferPointer { scan($0, into: &pieces) }
        }
        return pieces
    }

    private mutating func scan(_ bytes: UnsafeBufferPointer<UInt8>, into pieces: inout [Piece]) {
        var index = 0
        while index < bytes.count {
            if recovering {
                // Skip to where QEMU's lexer resynchronises; a reset byte there is taken silently.
                while index < bytes.count && !JSONStreamSplitter.endsRecovery(bytes[index]) { index += 1 }
                guard index < bytes.count else { return }
                if JSONStreamSplitter.isReset(bytes[index]) {
                    index += 1
                    continue
                }
                recovering = false
            }
            if case .string(let quote, false) = token {
                // The plain run of a string, kept (or skipped) in one go.
                var end = index
                while end < bytes.count && JSONStreamSplitter.isPlainStringByte(bytes[end], quote: quote) { end += 1 }
                if end > index {
                    append(UnsafeBufferPointer(rebasing: bytes[index..<end]), into: &pieces)
                    index = end
                    continue
                }
            }
            lex(bytes[index], into: &pieces)
            index += 1
        }
    }

    /// One byte, in the token it continues, ends or starts.
    private mutating func lex(_ byte: UInt8, into pieces: inout [Piece]) {
        switch token {
        case .none:
            start(byte, into: &pieces)
        case .string(let quote, let escaped):
            if byte < 0x20 || byte >= 0xFE { return lexicalError(byte, into: &pieces) }
            append(byte, into: &pieces)
            if escaped {
                token = .string(quote: quote, escaped: false)
            } else if byte == UInt8(ascii: "\\") {
                token = .string(quote: quote, escaped: true)
            } else if byte == quote {
                endToken(into: &pieces)
            }
        case .number(let part):
            if let next = part.next(byte) {
                append(byte, into: &pieces)
                token = .number(next)
            } else if part.isComplete && !(part == .zero && JSONStreamSplitter.isDigit(byte)) {
                endToken(into: &pieces)
                lex(byte, into: &pieces)
            } else {
                lexicalError(byte, into: &pieces)
            }
        case .keyword:
            if (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) {
                append(byte, into: &pieces)
            } else {
                endToken(into: &pieces)
                lex(byte, into: &pieces)
            }
        }
    }

    /// A byte between tokens.
    private mutating func start(_ byte: UInt8, into pieces: inout [Piece]) {
        if JSONStreamSplitter.isSpace(byte) {
            if depth > 0 { append(byte, into: &pieces) }
            return
        }
        if depth == 0 { beginValue() }
        tokenStart = buffer.count
        switch byte {
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            append(byte, into: &pieces)
            depth += 1
            if depth > maxDepth && keeping { drop(.tooDeep, into: &pieces) }
        case UInt8(ascii: "}"), UInt8(ascii: "]"):
            append(byte, into: &pieces)
            // A closing character outside any value is a value of its own (the parser answers it).
            depth = max(depth - 1, 0)
            if depth == 0 { emit(into: &pieces) }
        case UInt8(ascii: ","), UInt8(ascii: ":"):
            append(byte, into: &pieces)
            if depth == 0 { emit(into: &pieces) }
        case UInt8(ascii: "\""), UInt8(ascii: "'"):
            append(byte, into: &pieces)
            token = .string(quote: byte, escaped: false)
        case UInt8(ascii: "-"):
            append(byte, into: &pieces)
            token = .number(.sign)
        case UInt8(ascii: "0"):
            append(byte, into: &pieces)
            token = .number(.zero)
        case UInt8(ascii: "1")...UInt8(ascii: "9"):
            append(byte, into: &pieces)
            token = .number(.integer)
        case UInt8(ascii: "a")...UInt8(ascii: "z"):
            append(byte, into: &pieces)
            token = .keyword
        default:
            lexicalError(byte, into: &pieces)
        }
    }

    /// The current token is complete; at the top level it is a value of its own.
    private mutating func endToken(into pieces: inout [Piece]) {
        token = .none
        if depth == 0 { emit(into: &pieces) }
    }

    /// A byte no token can take: reported with the token it broke (unless this value was already
    /// reported), the value dropped, and the input skipped until it resynchronises.
    private mutating func lexicalError(_ byte: UInt8, into pieces: inout [Piece]) {
        if keeping {
            let broken = tokenStart < buffer.count ? Array(buffer[tokenStart...]) : []
            pieces.append(.error(.stray(broken + [byte])))
        }
        reset()
        recovering = true
    }

    private mutating func beginValue() {
        buffer = []
        keeping = true
    }

    private mutating func append(_ byte: UInt8, into pieces: inout [Piece]) {
        guard keeping else { return }
        buffer.append(byte)
        if buffer.count > limit { drop(.tooLong, into: &pieces) }
    }

    private mutating func append(_ run: UnsafeBufferPointer<UInt8>, into pieces: inout [Piece]) {
        guard keeping else { return }
        buffer.append(contentsOf: run)
        if buffer.count > limit { drop(.tooLong, into: &pieces) }
    }

    /// The most the current value may hold: less for a token outside any value.
    private var limit: Int { depth == 0 ? min(maxLength, JSONStreamSplitter.maxScalarLength) : maxLength }

    /// The value collected is complete: handed out unless it was reported and dropped.
    private mutating func emit(into pieces: inout [Piece]) {
        if keeping { pieces.append(.value(buffer)) }
        reset()
    }

    /// Reports the value being collected and stops keeping it (its structure is still followed).
    private mutating func drop(_ error: JSONStreamError, into pieces: inout [Piece]) {
        pieces.append(.error(error))
        buffer = []
        tokenStart = 0
        keeping = false
    }

    /// Back to the top level, nothing held.
    private mutating func reset() {
        buffer = []
        tokenStart = 0
        depth = 0
        token = .none
        keeping = true
    }

    private static func isSpace(_ byte: UInt8) -> Bool {
        byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") || byte == UInt8(ascii: "\r") || byte == UInt8(ascii: "\n")
    }

    private static func isDigit(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
    }

    /// 0xFE, 0xFF, or a control character that is not white space: never part of a JSON text.
    private static func isReset(_ byte: UInt8) -> Bool {
        byte >= 0xFE || (byte < 0x20 && !isSpace(byte))
    }

    /// Where QEMU's lexer resynchronises after an error: a structural character, a control character
    /// other than tab, or 0xFE/0xFF.
    @inline(__always)
    private static func endsRecovery(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "{"), UInt8(ascii: "}"), UInt8(ascii: "["), UInt8(ascii: "]"), UInt8(ascii: ":"), UInt8(ascii: ","):
            return true
        default:
            return byte >= 0xFE || (byte < 0x20 && byte != UInt8(ascii: "\t"))
        }
    }

    /// A byte that continues a string without ending it, escaping or breaking it.
    @inline(__always)
    private static func isPlainStringByte(_ byte: UInt8, quote: UInt8) -> Bool {
        byte >= 0x20 && byte < 0xFE && byte != quote && byte != UInt8(ascii: "\\")
    }
}

/// Why the splitter dropped input; `message` is what QEMU's monitor answers.
public enum JSONStreamError: Error, Sendable, Equatable {
    /// A byte no token may take (a lexical error), with the part of the token it broke: the 0xFF
    /// that clients send to reset, or `01`.
    case stray([UInt8])
    /// A value longer than the splitter keeps (QEMU: `MAX_TOKEN_SIZE`).
    case tooLong
    /// A value nested deeper than the splitter keeps (QEMU: `MAX_NESTING`).
    case tooDeep

    /// The error description QEMU's monitor gives.
    public var message: String {
        switch self {
        case .stray(let text):
            return "JSON parse error, stray '\(String(decoding: text, as: UTF8.self))'"
        case .tooLong: return "JSON token size limit exceeded"
        case .tooDeep: return "JSON nesting depth limit exceeded"
        }
    }
}
