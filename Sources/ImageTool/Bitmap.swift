import BlockCore
import BlockDrivers

/// `blockimg bitmap`: changes the persistent dirty bitmaps of a qcow2 image as `qemu-img bitmap`
/// does: the actions run in the order given on the command line, each worded as QEMU words it when
/// it fails (earlier actions stay done, as in qemu-img).
public struct BitmapCommand: Sendable {
    /// One change of the bitmap.
    public enum Action: Sendable, Equatable {
        /// `--add`: a new persistent, recording bitmap (granularity `-g`).
        case add
        /// `--remove`.
        case remove
        /// `--clear`.
        case clear
        /// `--enable`.
        case enable
        /// `--disable`.
        case disable
        /// `--merge SOURCE`: the bits of bitmap SOURCE (of `-b` file, else of this image) added.
        case merge(String)

        var name: String {
            switch self {
            case .add: "add"
            case .remove: "remove"
            case .clear: "clear"
            case .enable: "enable"
            case .disable: "disable"
            case .merge: "merge"
            }
        }
    }

    /// The image.
    public var path: String
    /// `-f`, when given.
    public var format: String?
    /// The bitmap the actions apply to.
    public var bitmap: String
    /// The actions, in command-line order.
    public var actions: [Action]
    /// `-g`: the granularity of an added bitmap (0 or nil: the default).
    public var granularity: UInt64?
    /// `-b`: the image holding the source bitmaps of `--merge`.
    public var sourceFile: String?
    /// `-F`: the format of `sourceFile`.
    public var sourceFormat: String?

    /// Parses qemu-img bitmap's arguments: `(--merge SOURCE | --add | --remove | --clear |
    /// --enable | --disable)... [-b SOURCE_FILE [-F SOURCE_FMT]] [-g GRANULARITY] [-f FMT]
    /// FILENAME BITMAP`, with qemu-img's checks and messages.
    public init(arguments: [String]) throws(ImageToolError) {
        var actions: [Action] = []
        var positional: [String] = []
        var format: String?
        var granularity: UInt64 = 0
        var sourceFile: String?
        var sourceFormat: String?
        var index = 0
        func value(_ option: String, attached: String?) throws(ImageToolError) -> String {
            if let attached { return attached }
            index += 1
            guard index < arguments.count else { throw ImageToolError("option requires an argument -- '\(option)'") }
            return arguments[index]
        }
        var onlyPositional = false
        while index < arguments.count {
            let argument = arguments[index]
            if onlyPositional || argument == "-" || !argument.hasPrefix("-") {
                positional.append(argument)
            } else if argument == "--" {
                onlyPositional = true
            } else if argument.hasPrefix("--") {
                let body = argument.dropFirst(2)
                let name = body.split(separator: "=", maxSplits: 1).first.map(String.init) ?? ""
                let attached = body.contains("=") ? String(body.split(separator: "=", maxSplits: 1).last ?? "") : nil
                switch name {
                case "add": actions.append(.add)
                case "remove": actions.append(.remove)
                case "clear": actions.append(.clear)
                case "enable": actions.append(.enable)
                case "disable": actions.append(.disable)
                case "merge": actions.append(.merge(try value(name, attached: attached)))
                case "granularity": granularity = try BitmapCommand.granularity(try value(name, attached: attached))
                case "source-file": sourceFile = try value(name, attached: attached)
                case "source-format": sourceFormat = try value(name, attached: attached)
                case "format": format = try value(name, attached: attached)
                default: throw ImageToolError("unrecognized option '\(argument)'")
                }
            } else {
                let letter = argument.dropFirst().first.map(String.init) ?? ""
                let rest = argument.dropFirst(2)
                let attached = rest.isEmpty ? nil : String(rest)
                switch letter {
                case "f": format = try value(letter, attached: attached)
                case "b": sourceFile = try value(letter, attached: attached)
                case "F": sourceFormat = try value(letter, attached: attached)
                case "g": granularity = try BitmapCommand.granularity(try value(letter, attached: attached))
                default: throw ImageToolError("invalid option -- '\(letter)'")
                }
            }
            index += 1
        }
        guard !actions.isEmpty else {
            throw ImageToolError("Need at least one of --add, --remove, --clear, --enable, --disable, or --merge")
        }
        if granularity != 0 && !actions.contains(.add) { throw ImageToolError("granularity only supported with --add") }
        if sourceFormat != nil && sourceFile == nil { throw ImageToolError("-F only supported with -b") }
        if sourceFile != nil && !actions.contains(where: { if case .merge = $0 { true } else { false } }) {
            throw ImageToolError("Merge bitmap source file only supported with --merge")
        }
        guard positional.count == 2 else { throw ImageToolError("Expecting filename and bitmap name") }
        self.path = positional[0]
        self.bitmap = positional[1]
        self.format = format
        self.actions = actions
        self.granularity = granularity == 0 ? nil : granularity
        self.sourceFile = sourceFile
        self.sourceFormat = sourceFormat
    }

    /// `-g`'s value: a size with qemu-img's suffixes.
    private static func granularity(_ text: String) throws(ImageToolError) -> UInt64 {
        guard let value = Sizes.parse(text) else {
            throw ImageToolError("Invalid granularity specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.")
        }
        return value
    }

    /// Runs the actions; the image (and its bitmaps) is stored when it closes, also after a failure.
    public func run() throws(ImageToolError) {
        let image = try ImageFiles.open(path, format: format, readOnly: false, withBacking: false)
        defer { image.close() }
        var source: OpenedImage?
        if let sourceFile {
            source = try ImageFiles.open(sourceFile, format: sourceFormat, readOnly: true, withBacking: false)
        }
        defer { source?.close() }
        let node = image.node
        let set = node.dirtyBitmaps
        for action in actions {
            do throws(DirtyBitmapError) {
                switch action {
                case .add:
                    let cluster = image.qcow2Header.map { UInt64($0.clusterSize) }
                    _ = try node.addDirtyBitmap(name: bitmap, granularity: granularity, clusterSize: cluster, persistent: true, disabled: false)
                case .remove:
                    try set.remove(bitmap)
                case .clear:
                    try set.clear(bitmap)
                case .enable:
                    try set.setEnabled(bitmap, true)
                case .disable:
                    try set.setEnabled(bitmap, false)
                case .merge(let name):
                    let target = try set.lookup(bitmap)
                    let from = try (source?.node.dirtyBitmaps ?? set).lookup(name)
                    try set.check(target, allow: [])
                    try set.check(from, allow: [.busy, .readOnly])
                    if from !== target { target.merge(from: from) }
                }
            } catch {
                throw ImageToolError("Operation \(action.name) on bitmap \(bitmap) failed: \(error.message)")
            }
        }
    }
}
