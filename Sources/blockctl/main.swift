#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import JSON
import QMPClient
import Version

/// The `blockctl` command: a QMP client for people and scripts.
struct BlockctlCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "blockctl",
        abstract: "Send QMP commands to blockd (or any QMP monitor) and follow its events.",
        discussion: """
            Arguments are key=value words: dotted keys build objects (options.driver=null-co), values \
            are JSON when they parse as JSON (size=1048576, writable=true, x='{"a":1}'), strings otherwise. \
            They are checked against the schema before anything is sent.

              blockctl --socket /run/blockd/qmp.sock query-block-exports
              blockctl --socket qmp.sock blockdev-add driver=null-co node-name=n0 size=1048576
              blockctl --socket qmp.sock --events
              blockctl --socket qmp.sock job-wait m1
              blockctl --socket qmp.sock --progress drive-backup device=d0 target=b.qcow2 sync=full
              blockctl help block-export-add

            job-wait JOBID follows a block job until it ends: a progress bar with percent, rate and \
            time left on a terminal, one line per change otherwise, then the job's last event. The exit \
            status is 0 when the job completed, 1 when it failed or was cancelled.
            """,
        version: BlockdVersion.string)

    @Option(name: .customLong("socket"), help: ArgumentHelp("The monitor's unix socket.", valueName: "path"))
    var socket: String?

    @Option(name: .customLong("host"), help: "The monitor's TCP host (with --port).")
    var host: String?

    @Option(name: .customLong("port"), help: "The monitor's TCP port.")
    var port: Int?

    @Flag(name: .customLong("json"), help: "Print the raw JSON reply on one line.")
    var json = false

    @Flag(name: .customLong("events"), help: "Print events as they arrive, until interrupted (or --count/--timeout).")
    var events = false

    @Option(name: .customLong("count"), help: "With --events: stop after this many events.")
    var count: Int?

    @Option(name: .customLong("timeout"), help: "With --events: stop after this many seconds without an event.")
    var timeout: Double?

    @Flag(name: .customLong("progress"), help: "After a command that starts a job, follow the job as job-wait does.")
    var progress = false

    @Argument(help: ArgumentHelp("COMMAND [key=value ...], or: help [COMMAND]", valueName: "command"))
    var words: [String] = []

    mutating func run() throws {
        if words.first == "help" {
            if words.count > 1 {
                guard let text = HelpText.command(words[1]) else {
                    throw ValidationError("unknown command '\(words[1])'")
                }
                print(text)
            } else if socket != nil || host != nil {
                // Mark what this server offers.
                guard let names = offeredCommands() else { throw ExitCode(2) }
                print(HelpText.overview(available: names))
            } else {
                print(HelpText.overview())
            }
            return
        }
        guard events || !words.isEmpty else { throw ValidationError("name a command (blockctl help lists them), or use --events") }
        do {
            let connection = try QMPConnection(unixPath: socket, host: host, port: port)
            if events {
                var seen = 0
                while count.map({ seen < $0 }) ?? true, let event = try connection.nextEvent(timeout: timeout) {
                    print(json ? event.serialized() : event.prettyPrinted())
                    seen += 1
                }
                return
            }
            let command = words[0]
            if command == "job-wait" {
                guard words.count == 2 else { throw ValidationError("job-wait takes one job id") }
                throw ExitCode(try follow(words[1], on: connection))
            }
            let arguments = try CommandArguments.build(command: command, words: Array(words.dropFirst()))
            let reply = try connection.execute(command, arguments: arguments)
            if let error = reply["error"] {
                let errorClass = error["class"].flatMap { if case .string(let text) = $0 { text } else { nil } } ?? "Error"
                let description = error["desc"].flatMap { if case .string(let text) = $0 { text } else { nil } } ?? error.serialized()
                printError("\(errorClass): \(description)")
                throw ExitCode(1)
            }
            let result = reply["return"] ?? .object([:])
            if progress {
                guard case .string(let id)? = arguments?["job-id"] ?? arguments?["device"] else {
                    throw ValidationError("--progress needs a command that starts a job (job-id= or device=)")
                }
                throw ExitCode(try follow(id, on: connection))
            }
            if json {
                print(reply.serialized())
            } else if result == .object([:]) {
                print("OK")
            } else {
                print(result.prettyPrinted())
            }
            for event in connection.events { printError("event: \(event.serialized())") }
        } catch let error as QMPClientError {
            printError(error.description)
            throw ExitCode(2)
        }
    }

    /// Follows job `id` to its end, printing its progress and events; returns the exit status.
    private func follow(_ id: String, on connection: QMPConnection) throws(QMPClientError) -> Int32 {
        let terminal = isatty(1) == 1
        var lastLine = ""
        var barShown = false
        let outcome = try JobFollower(id: id).run(on: connection) { report in
            switch report {
            case .progress(let state):
                if terminal {
                    writeOut("\r\u{1B}[K" + state.bar())
                    barShown = true
                } else if state.line != lastLine {
                    lastLine = state.line
                    writeOut(state.line + "\n")
                }
            case .event(let event):
                if barShown {
                    writeOut("\n")
                    barShown = false
                }
                let name = event["event"].flatMap { if case .string(let text) = $0 { text } else { nil } } ?? "?"
                writeOut("\(name) \((event["data"] ?? .object([:])).serialized())\n")
            }
        }
        if barShown { writeOut("\n") }
        if case .vanished = outcome { printError("job '\(id)' ended without a final event on this connection") }
        return outcome.exitCode
    }

    /// The commands the server lists in query-commands; nil (after printing why) when it cannot be asked.
    private func offeredCommands() -> Set<String>? {
        let reply: JSONValue
        do throws(QMPClientError) {
            reply = try QMPConnection(unixPath: socket, host: host, port: port).execute("query-commands", arguments: nil)
        } catch {
            printError(error.description)
            return nil
        }
        var names = Set<String>()
        if case .array(let items)? = reply["return"] {
            for item in items { if case .string(let name)? = item["name"] { names.insert(name) } }
        }
        return names
    }

    private func printError(_ text: String) {
        var standardError = StandardError()
        print("blockctl: \(text)", to: &standardError)
    }
}

/// Writes `text` to standard output at once (no buffering: a progress bar must show now).
func writeOut(_ text: String) {
    var bytes = Array(text.utf8)
    bytes.withUnsafeMutableBytes { _ = Glibc.write(1, $0.baseAddress, $0.count) }
}

/// Standard error as a text stream.
struct StandardError: TextOutputStream {
    mutating func write(_ string: String) {
        var bytes = Array(string.utf8)
        bytes.withUnsafeMutableBytes { _ = Glibc.write(2, $0.baseAddress, $0.count) }
    }
}

BlockctlCommand.main()
