/// `blockd-nbd -L`: another server's exports, printed exactly as `qemu-nbd --list` prints them.
enum QemuNbdList {
    /// Names of the transmission flag bits, as qemu-nbd prints them.
    static let flagNames: [(bit: Int, name: String)] = [
        (1, "readonly"), (2, "flush"), (3, "fua"), (4, "rotational"), (5, "trim"), (6, "zeroes"), (7, "df"),
        (8, "multi"), (9, "resize"), (10, "cache"), (11, "fast-zero"),
    ]

    /// Lists the exports of the server at `-k`, else `-b`:`-p` (default localhost... as qemu-nbd: 0.0.0.0:10809).
    static func run(_ options: QemuNbdOptions, argv0: String) -> Int32 {
        do {
            QemuNbdRunner.printOut(try text(options))
            return 0
        } catch {
            return QemuNbdRunner.fail(error, argv0)
        }
    }

    /// The listing text.
    static func text(_ options: QemuNbdOptions) throws(QemuNbdError) -> String {
        var client = try QemuNbdClient.connect(options.listenAddress)
        defer { client.close() }
        try client.negotiateStructuredReplies()
        let exports = try client.listExports()
        var details: [QemuNbdClient.ExportInfo] = []
        for entry in exports {
            var info = try client.info(entry.name, go: false)
            info.description = entry.description
            if client.structured { info.contexts = try client.metaContexts(entry.name) }
            details.append(info)
        }
        client.abort()
        return format(details)
    }

    /// qemu-nbd's layout for a list of exports.
    static func format(_ exports: [QemuNbdClient.ExportInfo]) -> String {
        var out = "exports available: \(exports.count)\n"
        for export in exports {
            out += " export: '\(export.name)'\n"
            if !export.description.isEmpty { out += "  description: \(export.description)\n" }
            if export.flags & 1 != 0 {
                out += "  size:  \(export.size)\n"
                out += "  flags: 0x\(String(export.flags, radix: 16)) ("
                for (bit, name) in flagNames where export.flags & (1 << bit) != 0 { out += " \(name)" }
                out += " )\n"
            }
            if export.minimumBlock != 0 {
                out += "  min block: \(export.minimumBlock)\n"
                out += "  opt block: \(export.preferredBlock)\n"
                out += "  max block: \(export.maximumBlock)\n"
            }
            if !export.contexts.isEmpty {
                out += "  available meta contexts: \(export.contexts.count)\n"
                for context in export.contexts { out += "   \(context)\n" }
            }
        }
        return out
    }
}
