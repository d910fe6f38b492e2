/// Command-line splitting with GNU `getopt_long`'s rules, so that a program that mimics a C tool
/// accepts exactly what the tool accepts: clustered short options (`-rt`), attached values
/// (`-xNAME`, `--port=10809`), a required value taken from the next word whatever it looks like,
/// unambiguous prefixes of long names (`--persist`), operands anywhere (permuted) and `--`.
/// Errors are glibc's message texts, without the program-name prefix.
public struct GetoptLong: Sendable {
    /// One long option.
    public struct LongOption: Sendable, Equatable {
        /// The name without dashes.
        public var name: String
        /// Whether it takes a value.
        public var takesValue: Bool
        /// What the caller sees: the equivalent short letter, or the long name when there is none.
        public var code: String

        /// A long option answering to `code` (the name when nil).
        public init(_ name: String, value: Bool, code: String? = nil) {
            self.name = name
            self.takesValue = value
            self.code = code ?? name
        }
    }

    /// One parsed word (or part of a cluster).
    public enum Item: Sendable, Equatable {
        /// An option by code, with its value when it takes one.
        case option(String, String?)
        /// An error, worded as glibc's getopt prints it after `PROGRAM: `; parsing stops here.
        case error(String)
    }

    private let shorts: [Character: Bool]
    private let longs: [LongOption]

    /// A parser for `getopt_long(argc, argv, shortSpec, longs)`: in `shortSpec` a letter followed by `:` takes a value.
    public init(shortSpec: String, longs: [LongOption]) {
        var shorts: [Character: Bool] = [:]
        var characters = Array(shortSpec)[...]
        while let letter = characters.popFirst() {
            let takesValue = characters.first == ":"
            if takesValue { characters.removeFirst() }
            shorts[letter] = takesValue
        }
        self.shorts = shorts
        self.longs = longs
    }

    /// The options in order (up to and including the first error) and the operands.
    public func parse(_ arguments: [String]) -> (items: [Item], operands: [String]) {
        var items: [Item] = []
        var operands: [String] = []
        var index = 0
        while index < arguments.count {
            let word = arguments[index]
            index += 1
            if word == "--" {
                operands.append(contentsOf: arguments[index...])
                break
            }
            if word == "-" || !word.hasPrefix("-") {
                operands.append(word)
                continue
            }
            if word.hasPrefix("--") {
                items.append(long(String(word.dropFirst(2)), arguments, &index))
            } else {
                items.append(contentsOf: cluster(Array(word.dropFirst()), arguments, &index))
            }
            if case .error = items.last { return (items, operands) }
        }
        return (items, operands)
    }

    private func long(_ text: String, _ arguments: [String], _ index: inout Int) -> Item {
        let name: Substring
        let attached: String?
        if let equals = text.firstIndex(of: "=") {
            name = text[..<equals]
            attached = String(text[text.index(after: equals)...])
        } else {
            name = text[...]
            attached = nil
        }
        let found: LongOption
        if let exact = longs.first(where: { $0.name == name }) {
            found = exact
        } else {
            let candidates = longs.filter { $0.name.hasPrefix(name) }
            guard let first = candidates.first else { return .error("unrecognized option '--\(text)'") }
            // Prefixes naming the same option in effect are not ambiguous.
            if candidates.contains(where: { $0.code != first.code || $0.takesValue != first.takesValue }) {
                let names = candidates.map { " '--\($0.name)'" }.joined()
                return .error("option '--\(text)' is ambiguous; possibilities:\(names)")
            }
            found = first
        }
        if !found.takesValue {
            if attached != nil { return .error("option '--\(found.name)' doesn't allow an argument") }
            return .option(found.code, nil)
        }
        if let attached { return .option(found.code, attached) }
        guard index < arguments.count else { return .error("option '--\(found.name)' requires an argument") }
        index += 1
        return .option(found.code, arguments[index - 1])
    }

    private func cluster(_ letters: [Character], _ arguments: [String], _ index: inout Int) -> [Item] {
        var items: [Item] = []
        var position = 0
        while position < letters.count {
            let letter = letters[position]
            position += 1
            guard letter != ":", let takesValue = shorts[letter] else {
                items.append(.error("invalid option -- '\(letter)'"))
                return items
            }
            guard takesValue else {
                items.append(.option(String(letter), nil))
                continue
            }
            if position < letters.count {
                items.append(.option(String(letter), String(letters[position...])))
            } else if index < arguments.count {
                items.append(.option(String(letter), arguments[index]))
                index += 1
            } else {
                items.append(.error("option requires an argument -- '\(letter)'"))
            }
            return items
        }
        return items
    }
}
