/// Cuts a byte stream into whole top-level JSON texts (as QMP sends them, one after another),
/// without parsing them, in bounded memory, and recovers from bad input the way QEMU's JSON
/// lexer and streamer do (qobject/json-lexer.c, json-streamer.c; docs/interop/qmp-spec):
///
/// - A byte no JSON text may hold (0xFE, 0xFF, or an ASCII control character other than white
///   space, and any control character inside a string) is a lexical error: it is reported and
///   whatever value was being collected is dropped. Clients send 0xFF to force this reset.
/// - Bytes outside any value that cannot start one are reported once; the splitter then skips
///   to the next structural character (`{ } [ ] : ,`), control character or 0xFE/0xFF.
/// - A value longer than `maxLength` bytes or nested deeper than `maxDepth` is reported once and
///   then skipped to its end (or to a reset byte) without being kept.
///
/// After a reported error, reset bytes are taken silently until the input resynchronises, so that
/// `0xFF 0xFF` or `0xFF\n` is answered once, and 0xFF ends a value already reported without
/// another answer.
public struct JSONStreamSplitter: Sendable {
    /// What feeding bytes produced.
    public enum Piece: Sendable, Equatable {
        /// One complete JSON object or array, as bytes.
        case value([UInt8])
        /// Input that was dropped, and why.
        case error(JSONStreamError)
    }

    /// Longest value kept; a longer one is reported and dropped.
    public let maxLength: Int
    /// Deepest nesting of objects and arrays kept (QEMU's `MAX_NESTING`).
    public let maxDepth: Int
    private var buffer: [UInt8] = []
    private var depth = 0
    private var inString = false
    private var escaped = false
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
            if inString && !escaped {
                // The plain run of a string, kept (or skipped) in one go.
                var end = index
                while end < bytes.count && JSONStreamSplitter.isPlainStringByte(bytes[end]) { end += 1 }
                if end > index {
                    if keeping {
                        buffer.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[index..<end]))
                        if buffer.count > maxLength { drop(.tooLong, into: &pieces) }
                    }
                    index = end
                    continue
                }
            }
            if depth == 0 {
                start(bytes[index], into: &pieces)
            } else {
                collect(bytes[index], into: &pieces)
            }
            index += 1
        }
    }

    /// A byte outside any value.
    private mutating func start(_ byte: UInt8, into pieces: inout [Piece]) {
        switch byte {
        case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\r"), UInt8(ascii: "\n"):
            return
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            depth = 1
            keeping = true
            buffer = [byte]
        default:
            pieces.append(.error(JSONStreamSplitter.isReset(byte) ? .stray(byte) : .outsideValue))
            recovering = true
        }
    }

    /// A byte inside a value.
    private mutating func collect(_ byte: UInt8, into pieces: inout [Piece]) {
        if byte >= 0xFE || (byte < 0x20 && (inString || !JSONStreamSplitter.isSpace(byte))) {
            // Reported unless this value was already; then the byte only ends the skipping.
            if keeping { pieces.append(.error(.stray(byte))) }
            reset()
            recovering = true
            return
        }
        if keeping {
            buffer.append(byte)
            if buffer.count > maxLength { drop(.tooLong, into: &pieces) }
        }
        if inString {
            if escaped {
                escaped = false
            } else if byte == UInt8(ascii: "\\") {
                escaped = true
            } else if byte == UInt8(ascii: "\"") {
                inString = false
            }
            return
        }
        switch byte {
        case UInt8(ascii: "\""):
            inString = true
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            depth += 1
            if depth > maxDepth && keeping { drop(.tooDeep, into: &pieces) }
        case UInt8(ascii: "}"), UInt8(ascii: "]"):
            depth -= 1
            if depth == 0 {
                if keeping { pieces.append(.value(buffer)) }
                reset()
            }
        default:
            break
        }
    }

    /// Reports the value being collected and stops keeping it (its structure is still followed).
    private mutating func drop(_ error: JSONStreamError, into pieces: inout [Piece]) {
        pieces.append(.error(error))
        buffer = []
        keeping = false
    }

    /// Back to the top level, nothing held.
    private mutating func reset() {
        buffer = []
        depth = 0
        inString = false
        escaped = false
        keeping = true
    }

    private static func isSpace(_ byte: UInt8) -> Bool {
        byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") || byte == UInt8(ascii: "\r") || byte == UInt8(ascii: "\n")
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
    private static func isPlainStringByte(_ byte: UInt8) -> Bool {
        byte >= 0x20 && byte < 0xFE && byte != UInt8(ascii: "\"") && byte != UInt8(ascii: "\\")
    }
}

/// Why the splitter dropped input; `message` is what QEMU's monitor answers.
public enum JSONStreamError: Error, Sendable, Equatable {
    /// A byte that no JSON text may hold (a lexical error), such as the 0xFF clients send to reset.
    case stray(UInt8)
    /// Bytes outside any value that cannot start one.
    case outsideValue
    /// A value longer than the splitter keeps (QEMU: `MAX_TOKEN_SIZE`).
    case tooLong
    /// A value nested deeper than the splitter keeps (QEMU: `MAX_NESTING`).
    case tooDeep

    /// The error description QEMU's monitor gives.
    public var message: String {
        switch self {
        case .stray(let byte):
            let shown = byte < 0x80 ? String(Unicode.Scalar(byte)) : "\u{FFFD}"
            return "JSON parse error, stray '\(shown)'"
        case .outsideValue: return "JSON parse error, invalid input outside of an object"
        case .tooLong: return "JSON token size limit exceeded"
        case .tooDeep: return "JSON nesting depth limit exceeded"
        }
    }
}
