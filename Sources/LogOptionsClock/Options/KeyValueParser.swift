/// Parses qemu-storage-daemon's option syntax: `key=value,a.b=value` (`,,` is a literal comma),
/// or a JSON object when the text starts with `{`.
public enum KeyValueParser {
    /// Parses `text`. A first element without `=` is the value of `impliedKey`, when one is given.
    public static func parse(_ text: String, impliedKey: String? = nil) throws(OptionError) -> OptionValue {
        if text.first == "{" { return try OptionValue.parseJSON(text) }
        var root: [String: OptionValue] = [:]
        var isFirst = true
        for element in try split(text) {
            defer { isFirst = false }
            guard let equals = element.firstIndex(of: "=") else {
                if isFirst, let impliedKey {
                    try insert(element, at: [impliedKey], into: &root)
                    continue
                }
                throw OptionError("expected 'key=value', got '\(element)'")
            }
            let key = String(element[..<equals])
            let value = String(element[element.index(after: equals)...])
            let path = key.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
            guard !key.isEmpty, !path.contains(where: \.isEmpty) else { throw OptionError("invalid parameter name '\(key)'") }
            try insert(value, at: path, into: &root)
        }
        return try arraysFromNumericKeys(.object(root))
    }

    /// Splits on single commas; a doubled comma is a literal comma.
    static func split(_ text: String) throws(OptionError) -> [String] {
        var elements: [String] = []
        var current = ""
        var iterator = Array(text).makeIterator()
        var pending = iterator.next()
        while let character = pending {
            pending = iterator.next()
            if character == "," {
                if pending == "," {
                    current.append(",")
                    pending = iterator.next()
                } else {
                    elements.append(current)
                    current = ""
                }
            } else {
                current.append(character)
            }
        }
        elements.append(current)
        if elements.contains(where: \.isEmpty) && text.isEmpty == false {
            throw OptionError("empty element in '\(text)'")
        }
        return text.isEmpty ? [] : elements
    }

    private static func insert(_ value: String, at path: [String], into object: inout [String: OptionValue]) throws(OptionError) {
        let key = path[0]
        if path.count == 1 {
            guard object[key] == nil else { throw OptionError("parameter '\(key)' is given twice") }
            object[key] = .string(value)
            return
        }
        var child: [String: OptionValue]
        switch object[key] {
        case nil: child = [:]
        case .object(let existing): child = existing
        default: throw OptionError("parameter '\(key)' is both a value and a group")
        }
        do {
            try insert(value, at: Array(path.dropFirst()), into: &child)
        } catch {
            throw OptionError(error.message.replacingFirst("'", with: "'\(key)."))
        }
        object[key] = .object(child)
    }

    /// Turns objects whose keys are exactly 0, 1, ... n-1 into arrays, recursively.
    private static func arraysFromNumericKeys(_ value: OptionValue) throws(OptionError) -> OptionValue {
        guard case .object(let members) = value else { return value }
        var converted: [String: OptionValue] = [:]
        for (key, member) in members { converted[key] = try arraysFromNumericKeys(member) }
        // Only canonical numbers are indices: `00`, `+0` or `-0` are plain keys (Int() accepts them).
        let indices = converted.keys.compactMap { key in Int(key).flatMap { String($0) == key && $0 >= 0 ? $0 : nil } }
        guard !converted.isEmpty, indices.count == converted.count else { return .object(converted) }
        guard Set(indices) == Set(0..<indices.count) else {
            throw OptionError("array indices must be 0, 1, 2, ... without gaps")
        }
        return .array((0..<indices.count).map { converted[String($0)]! })
    }
}

extension String {
    func replacingFirst(_ target: Character, with replacement: String) -> String {
        guard let found = firstIndex(of: target) else { return self }
        return String(self[..<found]) + replacement + String(self[index(after: found)...])
    }
}
