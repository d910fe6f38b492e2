#if canImport(Glibc)
import Glibc
#endif

/// A private directory for the files a harness needs (images, backing files), one per process:
/// under `$BLOCKD_FUZZ_TMP` (set by scripts/fuzz), else `/dev/shm` or `/tmp`.
public enum FuzzScratch {
    /// The directory, created on first use.
    public static let directory: String = {
        let base = getenv("BLOCKD_FUZZ_TMP").map { String(cString: $0) }
            ?? (access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp")
        let path = "\(base)/blockd-fuzz-\(getpid())"
        guard mkdir(path, 0o700) == 0 || errno == EEXIST else {
            fatalError("cannot create \(path): \(String(cString: strerror(errno)))")
        }
        return path
    }()

    /// Writes `bytes` to the file `name` in the directory (replacing it); returns its path.
    @discardableResult
    public static func write(_ bytes: [UInt8], to name: String) -> String {
        let path = "\(directory)/\(name)"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { fatalError("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var done = 0
        while done < bytes.count {
            let count = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress! + done, bytes.count - done, off_t(done)) }
            guard count > 0 else { fatalError("cannot write \(path): \(String(cString: strerror(errno)))") }
            done += count
        }
        return path
    }
}
