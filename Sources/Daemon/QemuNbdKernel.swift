#if canImport(Glibc)
import Glibc
#endif
import CBlockShims
import Sockets
import Synchronization

/// `-c /dev/nbdX` and `-d /dev/nbdX`: the kernel's nbd client driven through its ioctl interface,
/// as qemu-nbd does. The client side connects to blockd-nbd's own socket, negotiates (simple
/// replies, as the kernel wants), hands the socket to the kernel and waits in NBD_DO_IT.
final class QemuNbdKernel: Sendable {
    // <linux/nbd.h>: _IO(0xab, n).
    static let setSock: UInt = 0xab00
    static let setBlockSize: UInt = 0xab01
    static let doIt: UInt = 0xab03
    static let clearSock: UInt = 0xab04
    static let clearQueue: UInt = 0xab05
    static let setSizeBlocks: UInt = 0xab07
    static let disconnectRequest: UInt = 0xab08
    static let setTimeout: UInt = 0xab09
    static let setFlags: UInt = 0xab0a

    private let device: String
    private let fd: Int32
    private let result = Mutex<Int32?>(nil)

    private init(device: String, fd: Int32) {
        self.device = device
        self.fd = fd
    }

    /// `-d`: tells the kernel to disconnect the device.
    static func disconnect(_ device: String) throws(QemuNbdError) {
        let fd = open(device, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw QemuNbdError("Cannot open \(device): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        _ = blk_ioctl_ulong(fd, disconnectRequest, 0)
        _ = blk_ioctl_ulong(fd, clearSock, 0)
    }

    /// `-c`: connects the device to the export being served; the kernel serves it from a thread
    /// until it is disconnected, which then ends the process (SIGTERM, as qemu-nbd does).
    static func attach(_ device: String, to options: QemuNbdOptions, verbose: Bool) throws(QemuNbdError) -> QemuNbdKernel {
        let client = try QemuNbdClient.connect(options.listenAddress)
        let info: QemuNbdClient.ExportInfo
        do {
            info = try client.info(options.exportName ?? "", go: true, blockSizes: false)
        } catch {
            client.close()
            throw error
        }
        // Simple replies, as the kernel wants: no NBD_OPT_STRUCTURED_REPLY was sent.
        let fd = open(device, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else {
            let reason = String(cString: strerror(errno))
            client.close()
            throw QemuNbdError("Failed to open \(device): \(reason)")
        }
        let blockSize: UInt = 4096
        let steps: [(UInt, UInt, String)] = [
            (setBlockSize, blockSize, "Failed setting NBD block size"),
            (setSizeBlocks, UInt(info.size / UInt64(blockSize)), "Failed setting size (in blocks)"),
            (setFlags, UInt(info.flags), "Failed setting flags"),
            (clearSock, 0, "Failed clearing NBD socket"),
            (setSock, UInt(client.io.fd), "Failed to set NBD socket"),
        ]
        for (request, argument, message) in steps where blk_ioctl_ulong(fd, request, argument) < 0 {
            let reason = String(cString: strerror(errno))
            close(fd)
            client.close()
            throw QemuNbdError("\(message): \(reason)")
        }
        let kernel = QemuNbdKernel(device: device, fd: fd)
        let socket = client.io.fd
        spawnThread {
            // Opening the device makes the kernel read the partition table.
            spawnThread {
                let partitions = open(device, O_RDWR | O_CLOEXEC)
                if partitions >= 0 { close(partitions) }
            }
            if verbose {
                QemuNbdRunner.printError("NBD device \(device) is now connected to \(options.file ?? "")\n")
            }
            let status: Int32 = blk_ioctl_ulong(fd, doIt, 0) < 0 && errno != EPIPE && errno != ECONNRESET ? 1 : 0
            _ = blk_ioctl_ulong(fd, clearQueue, 0)
            _ = blk_ioctl_ulong(fd, clearSock, 0)
            close(socket)
            kernel.result.withLock { $0 = status }
            kill(getpid(), SIGTERM)
        }
        return kernel
    }

    /// Asks the kernel to let go of the device (at exit).
    func detach() {
        guard result.withLock({ $0 }) == nil else { return }
        _ = blk_ioctl_ulong(fd, QemuNbdKernel.disconnectRequest, 0)
        // NBD_DO_IT returns once the kernel has dropped the socket.
        for _ in 0..<200 where result.withLock({ $0 }) == nil { usleep(10_000) }
    }

    /// The exit status: 0 when the device was disconnected cleanly.
    var status: Int32 { result.withLock { $0 } ?? 0 }
}
