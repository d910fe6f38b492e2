#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock
import BlockDrivers
import Sockets

/// `blockd-nbd`: qemu-nbd's process behaviour around blockd's daemon: listen first, then open the
/// image, serve one export, exit after the last client unless `-t`, `--fork` with the parent
/// reporting the child's errors, `--pid-file`, `-s` overlays, `-L` and `-c`/`-d`.
public enum QemuNbdRunner {
    /// Runs a whole invocation (`arguments[0]` is the program as invoked); returns the exit status.
    public static func main(_ arguments: [String]) -> Int32 {
        let argv0 = arguments.first ?? "blockd-nbd"
        signal(SIGPIPE, SIG_IGN)
        let options: QemuNbdOptions
        do {
            options = try QemuNbdOptions.parse(Array(arguments.dropFirst()))
        } catch {
            return fail(error, argv0)
        }
        Log.setLevel(options.verbose ? .info : .error)
        switch options.action {
        case .help:
            printOut(QemuNbdText.help(argv0))
            return 0
        case .version:
            printOut(QemuNbdText.version(argv0))
            return 0
        case .list:
            if options.tlsCreds != nil { return fail(QemuNbdError("--tls-creds: TLS is not supported yet by blockd-nbd"), argv0) }
            return QemuNbdList.run(options, argv0: argv0)
        case .disconnect(let device):
            do {
                try QemuNbdKernel.disconnect(device)
            } catch {
                return fail(error, argv0)
            }
            printOut("\(device) disconnected\n")
            return 0
        case .serve:
            return serve(options, argv0: argv0)
        }
    }

    /// The `--object` secrets, TLS credentials and authorizations, and `--tls-creds`/`--tls-authz`
    /// on the server, as blockd's `--object` and `--nbd-server` take them.
    private static func addSecurityObjects(_ options: QemuNbdOptions, to configuration: inout DaemonConfiguration) throws(OptionError) {
        for text in options.objects {
            guard let type = (try? QemuNbdObjects.typeAndID(text))?.type, SecurityObjectSpec.types.contains(type) else { continue }
            if let spec = try SecurityObjectSpec.parse(try KeyValueParser.parse(text, impliedKey: "qom-type")) {
                configuration.securityObjects.append(spec)
            }
        }
        guard let credentials = options.tlsCreds else { return }
        for index in configuration.servers.indices {
            configuration.servers[index].tlsCreds = credentials
            configuration.servers[index].tlsAuthz = options.tlsAuthz
        }
    }

    /// Prints `error` as qemu-nbd would; returns 1.
    static func fail(_ error: QemuNbdError, _ argv0: String) -> Int32 {
        printError(error.text(argv0: argv0))
        return 1
    }

    static func printOut(_ text: String) {
        var bytes = Array(text.utf8)
        _ = write(1, &bytes, bytes.count)
    }

    static func printError(_ text: String) {
        var bytes = Array(text.utf8)
        _ = write(2, &bytes, bytes.count)
    }

    private static func serve(_ options: QemuNbdOptions, argv0: String) -> Int32 {
        if options.selinuxLabel != nil { return fail(QemuNbdError("SELinux support not enabled in this binary"), argv0) }

        var signals = sigset_t()
        sigemptyset(&signals)
        for number in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&signals, number) }
        pthread_sigmask(SIG_BLOCK, &signals, nil)

        // Like qemu-nbd: with --fork (or -c without -v) the parent prints what the child reports
        // on its standard error until the child is serving, and exits 1 if it reported anything.
        let forked = options.fork || (options.device != nil && !options.verbose)
        if forked, case .parent(let status) = forkReporting() { return status }

        let listenFD: Int32
        do {
            listenFD = try QemuNbdListen.bind(options.listenAddress)
        } catch {
            return fail(error, argv0)
        }
        var cleanup = Cleanup(socketPath: options.socketPath, overlay: nil)
        defer { cleanup.run() }

        let node: OptionValue
        do {
            let (definition, overlay) = try QemuNbdImage.definition(options)
            cleanup.overlay = overlay
            node = definition
        } catch {
            return fail(error, argv0)
        }
        var configuration = options.configuration(node: node, address: .fd(listenFD))
        for text in options.objects where (try? QemuNbdObjects.typeAndID(text))?.type == "throttle-group" {
            do throws(OptionError) {
                configuration.throttleGroups.append(try ThrottleOptions.parseObject(try KeyValueParser.parse(text, impliedKey: "qom-type")))
            } catch {
                return fail(QemuNbdError(error.message), argv0)
            }
        }
        do throws(OptionError) {
            try addSecurityObjects(options, to: &configuration)
        } catch {
            return fail(QemuNbdError(error.message), argv0)
        }

        let daemon = Daemon(configuration: configuration)
        do {
            try daemon.start()
        } catch {
            daemon.stop()
            return fail(QemuNbdError("Failed to blk_new_open '\(options.file ?? "")': \(QemuNbdImage.plain(error.message))"), argv0)
        }
        if !options.persistent {
            daemon.server.onLastClientGone { kill(getpid(), SIGTERM) }
        }
        var kernel: QemuNbdKernel?
        if let device = options.device {
            do {
                kernel = try QemuNbdKernel.attach(device, to: options, verbose: options.verbose)
            } catch {
                daemon.stop()
                return fail(error, argv0)
            }
        }
        if let pidFile = options.pidFile {
            let fd = open(pidFile, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard fd >= 0 else {
                let reason = String(cString: strerror(errno))
                daemon.stop()
                return fail(QemuNbdError("Could not create '\(pidFile)': \(reason)"), argv0)
            }
            var text = Array("\(getpid())\n".utf8)
            _ = write(fd, &text, text.count)
            close(fd)
        }
        if forked {
            // Serving: standard error goes where standard output went (/dev/null), which closes the
            // pipe; the parent sees that and exits 0 (qemu-nbd 7.2's behaviour).
            dup2(1, 2)
        }
        Log.info("ready: \(daemon.status)")

        var received: Int32 = 0
        sigwait(&signals, &received)
        kernel?.detach()
        daemon.stop()
        return kernel?.status ?? 0
    }

    /// What to remove at exit.
    private struct Cleanup {
        var socketPath: String?
        var overlay: String?

        func run() {
            if let socketPath { unlink(socketPath) }
            if let overlay { unlink(overlay) }
        }
    }

    private enum ForkResult {
        case parent(Int32)
        case child
    }

    /// Forks. The parent copies the child's standard error (a pipe) to its own until the pipe
    /// closes, then exits 1 if anything came, else 0. The child gets a new session and /dev/null
    /// as standard input and output.
    private static func forkReporting() -> ForkResult {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else {
            printError("Error setting up communication pipe: \(String(cString: strerror(errno)))\n")
            return .parent(1)
        }
        let pid = fork()
        if pid < 0 {
            printError("Failed to fork: \(String(cString: strerror(errno)))\n")
            return .parent(1)
        }
        if pid > 0 {
            close(fds[1])
            var errors = false
            var chunk = [UInt8](repeating: 0, count: 1024)
            while true {
                let count = read(fds[0], &chunk, chunk.count)
                if count < 0 && errno == EINTR { continue }
                if count <= 0 { break }
                errors = true
                _ = write(2, &chunk, count)
            }
            return .parent(errors ? 1 : 0)
        }
        close(fds[0])
        setsid()
        let null = open("/dev/null", O_RDWR)
        if null >= 0 {
            dup2(null, 0)
            dup2(null, 1)
            if null > 2 { close(null) }
        }
        dup2(fds[1], 2)
        close(fds[1])
        return .child
    }
}
