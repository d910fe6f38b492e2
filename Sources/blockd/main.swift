import ArgumentParser
import BlockCore
import Daemon

/// The `blockd` command: a block-device exporter with qemu-storage-daemon's options.
struct BlockdCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "blockd",
        abstract: "Export block devices and disk images over NBD.",
        discussion: """
            Options take qemu-storage-daemon's syntax: dotted key=value pairs (a doubled comma is a \
            literal comma) or a JSON object. Example:

              blockd --blockdev driver=file,node-name=f0,filename=disk.img \\
                     --blockdev driver=raw,node-name=disk0,file=f0 \\
                     --nbd-server addr.type=unix,addr.path=/run/blockd/nbd.sock \\
                     --export type=nbd,id=e0,node-name=disk0,name=disk0,writable=on

            Drivers: file, host_device, host_cdrom, raw, null-co, null-aio.
            """,
        version: BlockdVersion.string)

    @Option(name: .customLong("blockdev"), help: ArgumentHelp("Define a block node.", valueName: "options"))
    var blockdevs: [String] = []

    @Option(name: .customLong("nbd-server"), help: ArgumentHelp(
        "Listen for NBD clients: addr.type=unix,addr.path=P | addr.type=inet,addr.host=H,addr.port=N | addr.type=fd,addr.str=N; max-connections=N (100), handshake-max-seconds=N (10).",
        valueName: "options"))
    var servers: [String] = []

    @Option(name: .customLong("export"), help: ArgumentHelp(
        "Export a node: type=nbd,id=ID,node-name=NODE[,name=NAME][,description=TEXT][,writable=on|off].", valueName: "options"))
    var exports: [String] = []

    @Option(name: .customLong("pidfile"), help: ArgumentHelp("Write the daemon's process id to this file.", valueName: "path"))
    var pidfile: String?

    @Flag(name: .customLong("daemonize"), help: "Detach once every listener is up; errors are still reported before exit.")
    var daemonize = false

    @Option(name: .customLong("log-level"), help: ArgumentHelp("error, warning, info or debug.", valueName: "level"))
    var logLevel: String = "info"

    mutating func run() throws {
        guard let level = LogLevel.allCases.first(where: { $0.name == logLevel }) else {
            throw ValidationError("--log-level expects error, warning, info or debug, got '\(logLevel)'")
        }
        Log.setLevel(level)
        var configuration: DaemonConfiguration
        do {
            configuration = try DaemonConfiguration(blockdevs: blockdevs, servers: servers, exports: exports)
        } catch {
            throw ValidationError(error.message)
        }
        configuration.pidfile = pidfile
        configuration.daemonize = daemonize
        let status = Lifecycle.run(configuration)
        if status != 0 { throw ExitCode(status) }
    }
}

BlockdCommand.main()
