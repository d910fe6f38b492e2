#if canImport(Glibc)
import Glibc
#endif
import Daemon

// `blockd-nbd`: qemu-nbd's command line over blockd's daemon (see QemuNbdOptions, QemuNbdRunner).
exit(QemuNbdRunner.main(CommandLine.arguments))
