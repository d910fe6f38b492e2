#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import CCurl

/// A file fetched whole into an unlinked local file, for protocols that cannot ask for byte ranges
/// (`tftp`): one transfer at open, then reads are local.
final class CurlWholeFile: Sendable {
    let fd: Int32

    /// Fetches `settings.url` (of `length` bytes) with a fresh handle into a temporary file.
    init(_ settings: CurlSettings, length: UInt64) throws(BlockError) {
        let directory = getenv("TMPDIR").map { String(cString: $0) } ?? "/var/tmp"
        var template = Array("\(directory)/blockd-tftp-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        guard fd >= 0 else { throw BlockError(errno: errno, "cannot create a temporary file in \(directory) for \(settings.url)") }
        unlink(template)
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        let handle = try CurlHandle(settings)
        var message = [CChar](repeating: 0, count: 512)
        let code = blk_curl_get_whole(handle.pointer, fd, &message, message.count)
        var info = stat()
        guard code == 0, fstat(fd, &info) == 0, UInt64(info.st_size) == length else {
            Glibc.close(fd)
            if code != 0 { throw .io("CURL: Error reading \(settings.url): \(cText(message))") }
            throw .io("\(settings.url): the transfer ended at \(info.st_size) bytes, the server announced \(length)")
        }
        self.fd = fd
    }

    deinit { Glibc.close(fd) }

    /// Reads from the local copy.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        var done = 0
        while done < buffer.count {
            let count = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { throw BlockError(errno: count < 0 ? errno : EIO, "read of the local copy failed") }
            done += count
        }
    }
}
