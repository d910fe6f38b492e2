#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock

/// Process-level behaviour: signals, `--daemonize`, `--pidfile`, systemd notification and reload.
public enum Lifecycle {
    /// Runs the daemon until SIGTERM or SIGINT (SIGHUP reloads the config file); returns the exit status.
    public static func run(_ options: CommandLineOptions, configuration: DaemonConfiguration) -> Int32 {
        signal(SIGPIPE, SIG_IGN)
        var signals = sigset_t()
        sigemptyset(&signals)
        for number in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&signals, number) }
        // Blocked here, before any thread exists, so every thread inherits the mask and only sigwait sees them.
        pthread_sigmask(SIG_BLOCK, &signals, nil)

        var readiness: Int32 = -1
        if configuration.daemonize {
            switch daemonize() {
            case .parent(let status): return status
            case .child(let pipe): readiness = pipe
            }
        }

        let notifier = SystemdNotifier()
        let daemon = Daemon(configuration: configuration, activation: SocketActivation.fromEnvironment())
        do {
            try daemon.start()
            if let pidfile = configuration.pidfile { try writePidfile(pidfile) }
        } catch {
            report(error.message, to: readiness)
            daemon.stop()
            return 1
        }
        if readiness >= 0 {
            report(nil, to: readiness)
            detachStandardStreams()
        }
        Log.info("ready: \(daemon.status)")
        notifier?.notify("READY=1\nSTATUS=\(daemon.status)\nMAINPID=\(getpid())")
        notifier?.startWatchdog()

        var received: Int32 = 0
        while true {
            sigwait(&signals, &received)
            guard received == SIGHUP else { break }
            guard options.configPath != nil else {
                Log.info("SIGHUP: no --config file to reload; ignored")
                continue
            }
            notifier?.notify("RELOADING=1\nMONOTONIC_USEC=\(MonotonicClock.nanoseconds() / 1000)\nSTATUS=reloading \(options.configPath!)")
            do {
                let configuration = try options.configuration()
                if options.logLevel == nil, let name = configuration.logLevel, let level = LogLevel(name: name) {
                    Log.setLevel(level)
                }
                try daemon.reload(configuration)
                Log.info("reloaded \(options.configPath!): \(daemon.status)")
            } catch {
                Log.error(error.message)
            }
            notifier?.notify("READY=1\nSTATUS=\(daemon.status)")
        }
        Log.info("signal \(received): draining connections and shutting down")
        notifier?.notify("STOPPING=1\nSTATUS=draining connections")
        daemon.stop()
        if let pidfile = configuration.pidfile { unlink(pidfile) }
        Log.info("stopped")
        return 0
    }

    private enum ForkResult {
        case parent(Int32)
        case child(Int32)
    }

    /// Forks; the parent waits until the child reports that it is listening (or why it failed).
    private static func daemonize() -> ForkResult {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else {
            Log.error("--daemonize: pipe: \(String(cString: strerror(errno)))")
            return .parent(1)
        }
        let pid = fork()
        if pid < 0 {
            Log.error("--daemonize: fork: \(String(cString: strerror(errno)))")
            return .parent(1)
        }
        if pid > 0 {
            close(fds[1])
            var message: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = read(fds[0], &chunk, chunk.count)
                if count <= 0 { break }
                message.append(contentsOf: chunk[0..<count])
            }
            if message == Array("OK".utf8) { return .parent(0) }
            if message.isEmpty { Log.error("--daemonize: the daemon exited during start-up") }
            return .parent(1)
        }
        close(fds[0])
        setsid()
        return .child(fds[1])
    }

    private static func report(_ failure: String?, to pipe: Int32) {
        if let failure { Log.error(failure) }
        guard pipe >= 0 else { return }
        var bytes = Array((failure == nil ? "OK" : "FAIL").utf8)
        _ = write(pipe, &bytes, bytes.count)
        close(pipe)
    }

    private static func detachStandardStreams() {
        let null = open("/dev/null", O_RDWR)
        guard null >= 0 else { return }
        for fd: Int32 in [0, 1, 2] { dup2(null, fd) }
        if null > 2 { close(null) }
    }

    private static func writePidfile(_ path: String) throws(OptionError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw OptionError("--pidfile: cannot write '\(path)': \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var text = Array("\(getpid())\n".utf8)
        guard write(fd, &text, text.count) == text.count else {
            throw OptionError("--pidfile: cannot write '\(path)': \(String(cString: strerror(errno)))")
        }
    }
}
