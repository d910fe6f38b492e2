import QAPI

/// Help texts rendered from the schema's documentation.
public enum HelpText {
    /// The list of commands with their one-line summaries.
    public static func overview(available: Set<String>? = nil) -> String {
        let names = QAPIDocumentation.commands.keys.sorted()
        let width = names.map(\.count).max() ?? 0
        var lines = ["Commands (blockctl help COMMAND for details):"]
        for name in names {
            let doc = QAPIDocumentation.commands[name]!
            let marker = available.map { $0.contains(name) ? " " : "-" } ?? " "
            lines.append("\(marker) \(name)\(String(repeating: " ", count: width - name.count))  \(doc.summary)")
        }
        if available != nil { lines.append("\n(-: not offered by this server)") }
        return lines.joined(separator: "\n")
    }

    /// The full help of one command, or nil when the schema does not know it.
    public static func command(_ name: String) -> String? {
        guard let doc = QAPIDocumentation.commands[name] else { return nil }
        var lines = ["blockctl [--socket PATH] \(name)" + doc.arguments.map { $0.optional ? " [\($0.name)=...]" : " \($0.name)=..." }.joined(), ""]
        lines.append(doc.text)
        if let returns = doc.returns { lines.append("\nReturns: \(returns)") }
        return lines.joined(separator: "\n")
    }
}
