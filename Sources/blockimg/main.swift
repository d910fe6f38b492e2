#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import ImageTool
import Version

/// The `blockimg` command: create, inspect and convert disk images (qemu-img's counterpart).
struct BlockimgCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "blockimg",
        abstract: "Create, inspect, convert and resize raw and qcow2 disk images.",
        discussion: "Options and output follow qemu-img's, so that its users recognise them.",
        version: BlockdVersion.string,
        subcommands: [Create.self, Info.self, Check.self, Map.self, Convert.self, Compare.self, Commit.self, Rebase.self, Resize.self, Snapshot.self, Measure.self, Bitmap.self])
}

/// Runs a library call: prints its error as `blockimg: ...` and exits with the error's code.
func perform(_ body: () throws(ImageToolError) -> Void) throws {
    do {
        try body()
    } catch {
        if !error.message.isEmpty {
            var standardError = StandardError()
            print("blockimg: \(error.message)", to: &standardError)
        }
        throw ExitCode(error.exitCode)
    }
}

struct Bitmap: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Add, remove, clear, enable, disable or merge a persistent dirty bitmap of a qcow2 image.",
        discussion: "blockimg bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... [-b SOURCE_FILE [-F SOURCE_FMT]] [-g GRANULARITY] [-f FMT] FILENAME BITMAP")
    @Argument(parsing: .captureForPassthrough, help: "The actions, options, image and bitmap, as qemu-img bitmap takes them.") var arguments: [String] = []

    func run() throws {
        if arguments.contains(where: { $0 == "-h" || $0 == "--help" }) {
            print(Bitmap.helpMessage())
            return
        }
        try perform { () throws(ImageToolError) in try BitmapCommand(arguments: arguments).run() }
    }
}

/// `--output=human|json`.
enum OutputFormat: String, ExpressibleByArgument {
    case human, json
}

struct Create: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create a new image.")
    @Option(name: .customShort("f"), help: ArgumentHelp("Format: raw or qcow2.", valueName: "fmt")) var format = "raw"
    @Option(name: .customShort("o"), help: ArgumentHelp("Format options: key=value[,key=value...], or 'help'.", valueName: "options")) var options: [String] = []
    @Option(name: .customShort("b"), help: ArgumentHelp("Backing file (qcow2).", valueName: "backing_file")) var backing: String?
    @Option(name: .customShort("F"), help: ArgumentHelp("Backing file format.", valueName: "backing_fmt")) var backingFormat: String?
    @Flag(name: .customShort("u"), help: "Do not open the backing file (the size must be given).") var unsafe = false
    @Flag(name: .customShort("q"), help: "Quiet: print nothing on success.") var quiet = false
    @Argument(help: "The image file.") var filename: String
    @Argument(help: "Virtual size in bytes, or with a k, M, G, T, P or E suffix.") var size: String?

    func run() throws {
        if options.contains("help") || options.contains("?") {
            print(CreateOptions.help(format: format))
            return
        }
        try perform { () throws(ImageToolError) in
            let line = try CreateCommand(
                path: filename, format: format, size: size, options: options, backingFile: backing,
                backingFormat: backingFormat, unsafe: unsafe
            ).run()
            if !quiet { print(line) }
        }
    }
}

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show an image's format, sizes and format-specific details.")
    @Option(name: .customShort("f"), help: ArgumentHelp("Format (probed when absent).", valueName: "fmt")) var format: String?
    @Option(name: .customLong("output"), help: "human or json.") var output: OutputFormat = .human
    @Flag(name: .customLong("backing-chain"), help: "Show every image of the backing chain.") var backingChain = false
    @Flag(name: .customShort("U"), help: "Accepted for qemu-img compatibility (blockimg takes no image locks).") var forceShare = false
    @Argument(help: "The image file.") var filename: String

    func run() throws {
        try perform { () throws(ImageToolError) in
            let command = InfoCommand(path: filename, format: format, backingChain: backingChain)
            print(output == .json ? try command.json() : try command.human())
        }
    }
}

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check a qcow2 image's refcounts and tables; -r repairs them.",
        discussion: "Exit status: 0 no errors, 1 the check failed, 2 corruptions, 3 leaked clusters only, 63 the format has no check.")
    @Option(name: .customShort("f"), help: ArgumentHelp("Format (probed when absent).", valueName: "fmt")) var format: String?
    @Option(name: .customLong("output"), help: "human or json.") var output: OutputFormat = .human
    @Option(name: .customShort("r"), help: ArgumentHelp("Repair leaked clusters, or all refcount errors.", valueName: "leaks|all")) var repair: String?
    @Flag(name: .customShort("q"), help: "Quiet: print nothing, report by exit status only.") var quiet = false
    @Flag(name: .customShort("U"), help: "Accepted for qemu-img compatibility (blockimg takes no image locks).") var forceShare = false
    @Argument(help: "The image file.") var filename: String

    func run() throws {
        try perform { () throws(ImageToolError) in
            let outcome = try CheckCommand(path: filename, format: format, repair: repair).run()
            if !quiet {
                var standardError = StandardError()
                for message in outcome.report.messages { print(message, to: &standardError) }
                if output == .json {
                    print(CheckCommand.json(outcome, filename: filename))
                } else {
                    print(CheckCommand.human(outcome), terminator: "")
                }
            }
            if outcome.exitCode != 0 { throw ImageToolError("", exitCode: outcome.exitCode) }
        }
    }
}

struct Snapshot: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List, create, apply or delete a qcow2 image's internal snapshots.")
    @Option(name: .customShort("f"), help: ArgumentHelp("Format (probed when absent).", valueName: "fmt")) var format: String?
    @Flag(name: .customShort("l"), help: "List the snapshots.") var list = false
    @Option(name: .customShort("c"), help: ArgumentHelp("Create a snapshot of the current contents.", valueName: "snapshot")) var create: String?
    @Option(name: .customShort("a"), help: ArgumentHelp("Revert the image to a snapshot.", valueName: "snapshot")) var apply: String?
    @Option(name: .customShort("d"), help: ArgumentHelp("Delete a snapshot.", valueName: "snapshot")) var delete: String?
    @Flag(name: .customShort("U"), help: "Accepted for qemu-img compatibility (blockimg takes no image locks).") var forceShare = false
    @Argument(help: "The image file.") var filename: String

    func validate() throws {
        let count = [list, create != nil, apply != nil, delete != nil].filter { $0 }.count
        guard count == 1 else { throw ValidationError("give exactly one of -l, -c, -a, -d") }
    }

    func run() throws {
        let action: SnapshotCommand.Action
        if let create {
            action = .create(create)
        } else if let apply {
            action = .apply(apply)
        } else if let delete {
            action = .delete(delete)
        } else {
            action = .list
        }
        try perform { () throws(ImageToolError) in
            if let table = try SnapshotCommand(path: filename, format: format, action: action).run() { print(table) }
        }
    }
}

struct Map: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show how the image's guest ranges are stored.")
    @Option(name: .customShort("f"), help: ArgumentHelp("Format (probed when absent).", valueName: "fmt")) var format: String?
    @Option(name: .customLong("output"), help: "human or json.") var output: OutputFormat = .human
    @Option(name: .customLong("start-offset"), help: "First guest offset to map.") var startOffset: String = "0"
    @Option(name: .customLong("max-length"), help: "Bytes to map at most.") var maxLength: String?
    @Flag(name: .customShort("U"), help: "Accepted for qemu-img compatibility (blockimg takes no image locks).") var forceShare = false
    @Argument(help: "The image file.") var filename: String

    func run() throws {
        try perform { () throws(ImageToolError) in
            guard let start = Sizes.parse(startOffset) else { throw ImageToolError("Invalid start offset specified! You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.") }
            var length: UInt64?
            if let maxLength {
                guard let value = Sizes.parse(maxLength) else { throw ImageToolError("Invalid length specified! You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.") }
                length = value
            }
            let command = MapCommand(path: filename, format: format, startOffset: start, maxLength: length)
            print(output == .json ? try command.json() : try command.human())
        }
    }
}

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Copy an image into a new image of any supported format.")
    @Option(name: .customShort("f"), help: ArgumentHelp("Source format (probed when absent).", valueName: "fmt")) var format: String?
    @Option(name: .customShort("O"), help: ArgumentHelp("Target format: raw or qcow2.", valueName: "output_fmt")) var outputFormat = "raw"
    @Option(name: .customShort("o"), help: ArgumentHelp("Target format options: key=value[,key=value...].", valueName: "options")) var options: [String] = []
    @Option(name: .customShort("S"), help: ArgumentHelp("Zero runs at least this long stay unwritten (0: write everything).", valueName: "sparse_size")) var sparse = "4k"
    @Option(name: .customShort("m"), help: ArgumentHelp("Parallel copies with -W (1 to 16).", valueName: "num_coroutines")) var workers = 8
    @Flag(name: .customShort("W"), help: "Copy in parallel, writing out of order.") var outOfOrder = false
    @Flag(name: .customShort("n"), help: "Do not create the target; it must exist and be large enough.") var noCreate = false
    @Flag(name: .customShort("p"), help: "Show progress.") var progress = false
    @Flag(name: .customShort("c"), help: "Write the target's clusters compressed (zlib; qcow2 only).") var compress = false
    @Flag(name: .customShort("U"), help: "Accepted for qemu-img compatibility (blockimg takes no image locks).") var forceShare = false
    @Argument(help: "Source image, then target image.") var filenames: [String]

    func run() throws {
        try perform { () throws(ImageToolError) in try convert() }
    }

    private func convert() throws(ImageToolError) {
        guard filenames.count == 2 else { throw ImageToolError("Expected one source and one target filename (got \(filenames.count) names)") }
            guard let sparseSize = Sizes.parse(sparse) else { throw ImageToolError("Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to 2 MiB") }
        let command = ConvertCommand(
            source: filenames[0], target: filenames[1], sourceFormat: format, targetFormat: outputFormat, options: options,
            sparseSize: sparseSize, noCreate: noCreate, outOfOrder: outOfOrder, workers: workers, compress: compress)
        let show = progress
        if show { ProgressLine.show(0) }
        let report: @Sendable (Double) -> Void = { percent in ProgressLine.show(percent) }
        try command.run(progress: show ? report : nil)
        if show { ProgressLine.finish() }
    }
}

struct Compare: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check whether two images read the same.",
        discussion: "Exit status: 0 identical, 1 different, 2 error.")
    @Option(name: .customShort("f"), help: ArgumentHelp("First image's format.", valueName: "fmt")) var firstFormat: String?
    @Option(name: .customShort("F"), help: ArgumentHelp("Second image's format.", valueName: "fmt")) var secondFormat: String?
    @Flag(name: .customShort("s"), help: "Strict: images of different sizes differ.") var strict = false
    @Flag(name: .customShort("U"), help: "Accepted for qemu-img compatibility (blockimg takes no image locks).") var forceShare = false
    @Argument(help: "The first image.") var first: String
    @Argument(help: "The second image.") var second: String

    func run() throws {
        try perform { () throws(ImageToolError) in
            let verdict = try CompareCommand(first: first, second: second, firstFormat: firstFormat, secondFormat: secondFormat, strict: strict).run()
            for line in verdict.output { print(line) }
            if verdict.exitCode != 0 { throw ImageToolError("", exitCode: verdict.exitCode) }
        }
    }
}

struct Commit: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Write a qcow2 image's own data into its backing file.")
    @Option(name: .customShort("f"), help: ArgumentHelp("Format (probed when absent).", valueName: "fmt")) var format: String?
    @Flag(name: .customShort("d"), help: "Keep the image's contents (do not empty it).") var keep = false
    @Flag(name: .customShort("q"), help: "Quiet: print nothing on success.") var quiet = false
    @Argument(help: "The image file.") var filename: String

    func run() throws {
        try perform { () throws(ImageToolError) in
            let line = try CommitCommand(path: filename, format: format, keep: keep).run()
            if !quiet { print(line) }
        }
    }
}

struct Rebase: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Change a qcow2 image's backing file.",
        discussion: "Safe mode (the default) first copies into the image every cluster that would read differently through the new backing file; -u only rewrites the header.")
    @Option(name: .customShort("f"), help: ArgumentHelp("Format (probed when absent).", valueName: "fmt")) var format: String?
    @Option(name: .customShort("b"), help: ArgumentHelp("The new backing file; \"\" for none.", valueName: "backing_file")) var backing: String
    @Option(name: .customShort("F"), help: ArgumentHelp("The new backing file's format.", valueName: "backing_fmt")) var backingFormat: String?
    @Flag(name: .customShort("u"), help: "Unsafe: rewrite the header only.") var unsafe = false
    @Argument(help: "The image file.") var filename: String

    func run() throws {
        try perform { () throws(ImageToolError) in
            try RebaseCommand(path: filename, format: format, backingFile: backing, backingFormat: backingFormat, unsafe: unsafe).run()
        }
    }
}

struct Resize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Change an image's virtual size.")
    @Option(name: .customShort("f"), help: ArgumentHelp("Format (probed when absent).", valueName: "fmt")) var format: String?
    @Flag(name: .customLong("shrink"), help: "Allow making the image smaller.") var shrink = false
    @Argument(help: "The image file.") var filename: String
    @Argument(help: "New size, or +N / -N relative to the current size.") var size: String

    func run() throws {
        try perform { () throws(ImageToolError) in print(try ResizeCommand(path: filename, format: format, size: size, shrink: shrink).run()) }
    }
}

struct Measure: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the file size an image would need.")
    @Option(name: .customShort("f"), help: ArgumentHelp("Source format (probed when absent).", valueName: "fmt")) var format: String?
    @Option(name: .customShort("O"), help: ArgumentHelp("Target format: raw or qcow2.", valueName: "output_fmt")) var outputFormat = "raw"
    @Option(name: .customShort("o"), help: ArgumentHelp("Target format options.", valueName: "options")) var options: [String] = []
    @Option(name: .customLong("size"), help: "Measure a new empty image of this size.") var size: String?
    @Option(name: .customLong("output"), help: "human or json.") var output: OutputFormat = .human
    @Argument(help: "The source image (or use --size).") var filename: String?

    func run() throws {
        try perform { () throws(ImageToolError) in
            let command = MeasureCommand(path: filename, format: format, size: size, targetFormat: outputFormat, options: options)
            print(output == .json ? try command.json() : try command.human())
        }
    }
}

/// qemu-img's progress line: `    (12.50/100%)`, rewritten in place.
enum ProgressLine {
    static func show(_ percent: Double) {
        let text = "    (" + CFormat.string("%.2f", percent) + "/100%)\r"
        _ = text.withCString { Glibc.write(1, $0, strlen($0)) }
    }

    static func finish() {
        show(100)
        _ = Glibc.write(1, "\n", 1)
    }
}

/// Standard error as a text stream.
struct StandardError: TextOutputStream {
    mutating func write(_ string: String) {
        var bytes = Array(string.utf8)
        bytes.withUnsafeMutableBytes { _ = Glibc.write(2, $0.baseAddress, $0.count) }
    }
}

BlockimgCommand.main()
