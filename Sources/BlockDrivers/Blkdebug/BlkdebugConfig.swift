#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock

/// blkdebug's `config` file: QEMU's configuration file syntax with `[inject-error]` and
/// `[set-state]` groups whose members are the rules' options, one `key = "value"` per line:
///
///     # fail the first read with ENOSPC
///     [inject-error]
///     event = "read_aio"
///     errno = "28"
///     once = "on"
///
///     [set-state]
///     event = "write_aio"
///     state = "1"
///     new_state = "2"
///
/// Blank lines and lines starting with `#` are skipped; a group header may carry an id
/// (`[inject-error "e1"]`), which is ignored; values may also be written without quotes.
public enum BlkdebugConfig {
    /// The rules of the file at `path`.
    public static func read(path: String) throws(OptionError) -> BlkdebugRuleSet {
        guard let file = fopen(path, "r") else {
            throw OptionError("could not read blkdebug config '\(path)': \(String(cString: strerror(errno)))")
        }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = fread(&chunk, 1, chunk.count, file)
            if count <= 0 { break }
            bytes += chunk[0..<count]
            guard bytes.count <= 1 << 20 else { throw OptionError("blkdebug config '\(path)' is larger than 1 MiB") }
        }
        return try parse(String(decoding: bytes, as: UTF8.self), name: path)
    }

    /// The rules of a config file's text; `name` is used in messages.
    public static func parse(_ text: String, name: String) throws(OptionError) -> BlkdebugRuleSet {
        var groups: [(kind: String, line: Int, members: [String: OptionValue])] = []
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" || $0 == "\r" }.reversed()
            let text = String(line)
            let where_ = "\(name):\(index + 1)"
            if text.isEmpty || text.hasPrefix("#") { continue }
            if text.hasPrefix("[") {
                guard text.hasSuffix("]") else { throw OptionError("\(where_): parse error: '\(text)'") }
                let inner = text.dropFirst().dropLast()
                let kind = String(inner.prefix { $0 != " " && $0 != "\t" })
                guard kind == "inject-error" || kind == "set-state" else {
                    throw OptionError("\(where_): there is no option group '\(kind)' (blkdebug knows inject-error and set-state)")
                }
                groups.append((kind, index + 1, [:]))
                continue
            }
            guard let equals = text.firstIndex(of: "=") else { throw OptionError("\(where_): parse error: '\(text)'") }
            let key = String(text[..<equals].reversed().drop { $0 == " " || $0 == "\t" }.reversed())
            var value = Substring(text[text.index(after: equals)...].drop { $0 == " " || $0 == "\t" })
            if value.count >= 2 && value.hasPrefix("\"") && value.hasSuffix("\"") { value = value.dropFirst().dropLast() }
            guard !key.isEmpty, !groups.isEmpty else { throw OptionError("\(where_): '\(key)' is outside of any group") }
            guard groups[groups.count - 1].members[key] == nil else { throw OptionError("\(where_): '\(key)' is given twice") }
            groups[groups.count - 1].members[key] = .string(String(value))
        }
        var rules = BlkdebugRuleSet()
        for group in groups {
            let rule = try OptionReader(.object(group.members), context: "blkdebug config \(name):\(group.line) [\(group.kind)]")
            if group.kind == "inject-error" {
                rules.injectErrors.append(try BlkdebugInjectError(rule))
            } else {
                rules.setStates.append(try BlkdebugSetState(rule))
            }
        }
        return rules
    }
}
