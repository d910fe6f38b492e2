import JSON
import QAPI

/// Turns `key=value` words into a command's arguments, checked against the schema: dotted keys
/// build objects, values are JSON when they parse as JSON (and the argument is not a string),
/// unknown and missing arguments are reported before anything is sent.
public enum CommandArguments {
    /// Builds the arguments object of `command` from `words`.
    public static func build(command: String, words: [String]) throws(QMPClientError) -> JSONValue? {
        guard let doc = QAPIDocumentation.commands[command] else {
            throw QMPClientError("unknown command '\(command)' (see 'blockctl help')")
        }
        var object: [String: JSONValue] = [:]
        for word in words {
            guard let equals = word.firstIndex(of: "="), equals != word.startIndex else {
                throw QMPClientError("expected key=value, got '\(word)'")
            }
            let key = String(word[..<equals])
            let text = String(word[word.index(after: equals)...])
            let path = key.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
            guard !path.contains(where: \.isEmpty) else { throw QMPClientError("invalid argument name '\(key)'") }
            let declared = doc.argument(path[0])
            if declared == nil && !doc.acceptsOtherArguments {
                let known = doc.arguments.map(\.name).joined(separator: ", ")
                throw QMPClientError("\(command) has no argument '\(path[0])'" + (known.isEmpty ? " (it takes none)" : " (it takes: \(known))"))
            }
            let value: JSONValue
            if path.count == 1, declared?.type == "str" {
                value = .string(text)
            } else {
                value = (try? JSONValue.parse(text)) ?? .string(text)
            }
            try insert(value, at: path, into: &object, key: key)
        }
        if let missing = doc.arguments.first(where: { !$0.optional && object[$0.name] == nil }) {
            throw QMPClientError("\(command) needs argument '\(missing.name)' (\(missing.type)): \(missing.doc)")
        }
        return object.isEmpty ? nil : .object(object)
    }

    private static func insert(_ value: JSONValue, at path: [String], into object: inout [String: JSONValue], key: String) throws(QMPClientError) {
        if path.count == 1 {
            guard object[path[0]] == nil else { throw QMPClientError("argument '\(key)' is given twice") }
            object[path[0]] = value
            return
        }
        var child: [String: JSONValue]
        switch object[path[0]] {
        case nil: child = [:]
        case .object(let existing): child = existing
        default: throw QMPClientError("argument '\(key)' is both a value and a group")
        }
        try insert(value, at: Array(path.dropFirst()), into: &child, key: key)
        object[path[0]] = .object(child)
    }
}
