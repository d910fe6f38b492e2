import BlockCore

/// A JSON value laid out as QEMU lays out its QObjects: an object's members come in the order
/// QEMU's QDict iterates them (by hash bucket), so that a `json:{...}` pseudo-filename reads
/// exactly as QEMU prints it.
indirect enum QObject: Equatable {
    case dict(QDict)
    case list([QObject])
    case string(String)
    case integer(Int64)
    case bool(Bool)
    case null

    /// QEMU's compact JSON text (`qobject_to_json`): `{"a": 1, "b": [true, null]}`.
    var json: String {
        switch self {
        case .dict(let dict): return dict.json
        case .list(let items): return "[" + items.map(\.json).joined(separator: ", ") + "]"
        case .string(let text): return QObject.quoted(text)
        case .integer(let value): return String(value)
        case .bool(let value): return value ? "true" : "false"
        case .null: return "null"
        }
    }

    /// A string in QEMU's JSON escaping: printable ASCII as it is, other characters as \uXXXX.
    static func quoted(_ text: String) -> String {
        var out = "\""
        for unit in text.unicodeScalars {
            switch unit {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case " "..."~": out.unicodeScalars.append(unit)
            default:
                for half in String(unit).utf16 { out += "\\u" + String(half, radix: 16, uppercase: true).leftPadded(to: 4) }
            }
        }
        return out + "\""
    }
}

/// QEMU's QDict: members hashed into 512 buckets, iterated bucket by bucket, the member added last
/// first within a bucket.
struct QDict: Equatable {
    private var members: [(key: String, value: QObject)] = []

    static func == (lhs: QDict, rhs: QDict) -> Bool {
        lhs.members.map(\.key) == rhs.members.map(\.key) && lhs.members.map(\.value) == rhs.members.map(\.value)
    }

    /// The keys in QEMU's iteration order.
    var keys: [String] { ordered.map(\.key) }

    /// Whether the dictionary has no members.
    var isEmpty: Bool { members.isEmpty }

    /// Adds or replaces a member (a replaced member keeps its place, as in QEMU).
    mutating func put(_ key: String, _ value: QObject) {
        if let index = members.firstIndex(where: { $0.key == key }) {
            members[index].value = value
        } else {
            members.append((key, value))
        }
    }

    /// The value of a member.
    subscript(key: String) -> QObject? { members.first { $0.key == key }?.value }

    private var ordered: [(key: String, value: QObject)] {
        members.enumerated()
            .sorted { a, b in
                let (ba, bb) = (QDict.bucket(a.element.key), QDict.bucket(b.element.key))
                return ba != bb ? ba < bb : a.offset > b.offset
            }
            .map(\.element)
    }

    var json: String {
        "{" + ordered.map { QObject.quoted($0.key) + ": " + $0.value.json }.joined(separator: ", ") + "}"
    }

    /// The bucket QEMU's QDict puts `key` in: the tdb hash of the key, modulo 512.
    static func bucket(_ key: String) -> UInt32 {
        let bytes = Array(key.utf8)
        var value = UInt32(truncatingIfNeeded: bytes.count) &* 0x238F_13AF
        for (index, byte) in bytes.enumerated() {
            value = value &+ (UInt32(byte) << UInt32(index * 5 % 24))
        }
        return (1_103_515_243 &* value &+ 12345) % 512
    }
}

private extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
