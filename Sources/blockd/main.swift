import ArgumentParser
import Daemon
import LogOptionsClock

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

            Drivers: file, host_device, host_cdrom, raw, qcow2, blkdebug, blkverify, quorum, throttle, null-co, null-aio.
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

    @Option(name: .customLong("chardev"), help: ArgumentHelp(
        "Define a socket for a monitor: socket,id=ID,path=PATH,server=on,wait=off or socket,id=ID,host=H,port=P,server=on,wait=off.",
        valueName: "options"))
    var chardevs: [String] = []

    @Option(name: .customLong("monitor"), help: ArgumentHelp(
        "Run a QMP monitor on a chardev: chardev=ID[,mode=control][,pretty=on].", valueName: "options"))
    var monitors: [String] = []

    @Option(name: .customLong("object"), help: ArgumentHelp(
        "Define a throttle group: throttle-group,id=ID,limits.bps-total=N,limits.iops-total=N,... (see README).", valueName: "options"))
    var objects: [String] = []

    @Option(name: .customLong("metrics"), help: ArgumentHelp(
        "Serve Prometheus metrics on GET /metrics: addr.type=inet,addr.host=H,addr.port=P or addr.type=unix,addr.path=PATH.",
        valueName: "options"))
    var metrics: [String] = []

    @Option(name: .customLong("config"), help: ArgumentHelp(
        "Read options from FILE: one per line, the option name without dashes, then its value (see README). SIGHUP re-reads it.",
        valueName: "file"))
    var configPath: String?

    @Option(name: .customLong("pidfile"), help: ArgumentHelp("Write the daemon's process id to this file.", valueName: "path"))
    var pidfile: String?

    @Flag(name: .customLong("daemonize"), help: "Detach once every listener is up; errors are still reported before exit.")
    var daemonize = false

    @Option(name: .customLong("log-level"), help: ArgumentHelp("error, warning, info or debug.", valueName: "level"))
    var logLevel: String = "info"


    mutating func run() throws {
        var options = CommandLineOptions()
        options.blockdevs = blockdevs
        options.servers = servers
        options.exports = exports
        options.chardevs = chardevs
        options.monitors = monitors
        options.objects = objects
        options.metrics = metrics
        options.configPath = configPath
        options.pidfile = pidfile
        options.daemonize = daemonize
        options.logLevel = logLevelGiven ? logLevel : nil
        let configuration: DaemonConfiguration
        do {
            configuration = try options.configuration()
        } catch {
            Log.error(error.message)
            throw ExitCode(1)
        }
        let levelName = logLevelGiven ? logLevel : configuration.logLevel ?? logLevel
        guard let level = LogLevel(name: levelName) else {
            Log.error("--log-level expects error, warning, info or debug, got '\(levelName)'")
            throw ExitCode(1)
        }
        Log.setLevel(level)
        let status = Lifecycle.run(options, configuration: configuration)
        if status != 0 { throw ExitCode(status) }
    }

    private var logLevelGiven: Bool {
        CommandLine.arguments.contains { $0 == "--log-level" || $0.hasPrefix("--log-level=") }
    }
}

BlockdCommand.main()
