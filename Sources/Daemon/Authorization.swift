#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock
import JSON
import Synchronization

/// What an `authz-*` object decides with.
public enum AuthorizationSpec: Sendable, Equatable {
    /// `authz-simple`: exactly one identity is allowed.
    case simple(identity: String)
    /// `authz-list`: rules, then a default policy.
    case list(AuthorizationList)
    /// `authz-listfile`: an `authz-list` read from a JSON file, re-read when it changes (`refresh`).
    case listFile(path: String, refresh: Bool)
}

/// QEMU's `QAuthZList`: the first rule that matches decides, else the default policy.
public struct AuthorizationList: Sendable, Equatable {
    /// One rule.
    public struct Rule: Sendable, Equatable {
        /// `match`: an identity, or a glob (`*` and `?`) when `glob` is set.
        public var match: String
        /// `policy`: allow (true) or deny.
        public var allow: Bool
        /// `format`: `glob` (true) or `exact`.
        public var glob: Bool
    }

    /// `policy`: what happens when no rule matches (allow true; QEMU's default is deny).
    public var allowByDefault: Bool
    /// `rules`, in order.
    public var rules: [Rule]

    /// Reads `policy` and `rules` (as `--object authz-list,rules.0.match=...` or the JSON of a list file).
    static func parse(_ reader: OptionReader) throws(OptionError) -> AuthorizationList {
        let policy = try reader.choice("policy", ["allow", "deny"]) ?? "deny"
        var rules: [Rule] = []
        if reader.has("rules") {
            for rule in try reader.objects("rules") {
                let match = try rule.requiredString("match")
                let allow = try rule.requiredChoice("policy", ["allow", "deny"]) == "allow"
                let glob = try rule.choice("format", ["exact", "glob"]) == "glob"
                try rule.finish()
                rules.append(Rule(match: match, allow: allow, glob: glob))
            }
        }
        return AuthorizationList(allowByDefault: policy == "allow", rules: rules)
    }

    /// Whether `identity` is allowed.
    func allows(_ identity: String) -> Bool {
        for rule in rules where rule.glob ? Glob.matches(rule.match, identity) : rule.match == identity {
            return rule.allow
        }
        return allowByDefault
    }
}

/// GLib's simple patterns, as QEMU's authz-list uses them: `*` any run, `?` any one character.
enum Glob {
    /// Whether `text` matches `pattern` whole.
    static func matches(_ pattern: String, _ text: String) -> Bool {
        let p = Array(pattern.unicodeScalars), t = Array(text.unicodeScalars)
        var pi = 0, ti = 0
        var star: Int?, resume = 0
        while ti < t.count {
            if pi < p.count && (p[pi] == "?" || (p[pi] != "*" && p[pi] == t[ti])) {
                pi += 1
                ti += 1
            } else if pi < p.count && p[pi] == "*" {
                star = pi
                pi += 1
                resume = ti
            } else if let star {
                pi = star + 1
                resume += 1
                ti = resume
            } else {
                return false
            }
        }
        while pi < p.count && p[pi] == "*" { pi += 1 }
        return pi == p.count
    }
}

/// A live `authz-*` object: decides whether a TLS client's identity may connect.
final class Authorization: Sendable {
    let id: String
    let spec: AuthorizationSpec
    /// For list files: the list and the modification time it was read at.
    private let cached = Mutex<(list: AuthorizationList, modified: timespec)?>(nil)

    /// Creates the object; a list file is read now, and its errors are the object's.
    init(id: String, spec: AuthorizationSpec) throws(OptionError) {
        self.id = id
        self.spec = spec
        if case .listFile(let path, _) = spec {
            let (list, modified) = try Authorization.read(path)
            cached.withLock { $0 = (list, modified) }
        }
    }

    /// Whether `identity` (nil: the client has none) may connect.
    func allows(_ identity: String?) -> Bool {
        guard let identity else { return false }
        switch spec {
        case .simple(let allowed):
            return identity == allowed
        case .list(let list):
            return list.allows(identity)
        case .listFile(let path, let refresh):
            return currentList(path, refresh: refresh)?.allows(identity) ?? false
        }
    }

    /// The list file's rules, read again when its modification time changed (refresh on).
    private func currentList(_ path: String, refresh: Bool) -> AuthorizationList? {
        let held = cached.withLock { $0 }
        guard refresh else { return held?.list }
        var info = stat()
        guard stat(path, &info) == 0 else { return held?.list }
        if let held, held.modified.tv_sec == info.st_mtim.tv_sec, held.modified.tv_nsec == info.st_mtim.tv_nsec { return held.list }
        do throws(OptionError) {
            let (list, modified) = try Authorization.read(path)
            cached.withLock { $0 = (list, modified) }
            Log.info("authz-listfile '\(id)': \(path) re-read (\(list.rules.count) rule(s))")
            return list
        } catch {
            Log.warning("authz-listfile '\(id)': \(error.message); keeping the rules read before")
            return held?.list
        }
    }

    private static func read(_ path: String) throws(OptionError) -> (AuthorizationList, timespec) {
        var info = stat()
        guard stat(path, &info) == 0, let data = Authorization.contents(of: path) else {
            throw OptionError("Unable to read '\(path)': \(String(cString: strerror(errno)))")
        }
        let value: JSONValue
        do throws(OptionError) {
            value = try JSONValue.parseJSON(String(decoding: data, as: UTF8.self))
        } catch {
            throw OptionError("Unable to parse '\(path)': \(error.message)")
        }
        let list = try AuthorizationList.parse(try OptionReader(value, context: path, syntax: .qmp))
        return (list, info.st_mtim)
    }
}

extension Authorization {
    /// The whole file at `path`, or nil with `errno` set.
    static func contents(of path: String) -> [UInt8]? {
        guard let file = fopen(path, "rb") else { return nil }
        defer { fclose(file) }
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fread(&chunk, 1, chunk.count, file)
            data.append(contentsOf: chunk[0..<count])
            if count < chunk.count { return ferror(file) != 0 ? nil : data }
        }
    }
}
