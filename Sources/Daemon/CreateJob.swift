#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import BlockDrivers
import Jobs

/// The work of a `blockdev-create` job: a new file, or a qcow2 image written onto a node. What
/// could not be resolved when the command ran (a missing node, a conflict) fails the job, as in QEMU.
final class CreateJob: JobDriver, NodeUser {
    /// What the job creates.
    enum Work: Sendable {
        /// A file of `size` bytes, reserved as `preallocation` says (off, falloc, full).
        case file(path: String, size: UInt64, preallocation: String)
        /// A qcow2 image on a node.
        case qcow2(node: BlockNode, options: Qcow2CreateOptions)
        /// A failure found when the command ran, reported by the job.
        case failure(String)
    }

    let kind = JobKind.create
    private let work: Work

    init(_ work: Work) {
        self.work = work
    }

    func uses(_ node: BlockNode) -> Bool {
        if case .qcow2(let target, _) = work { return target === node }
        return false
    }

    func run(_ job: Job) throws(JobError) {
        job.progress(current: 0, total: 1)
        // QEMU counts the one step done whether it succeeded or not.
        defer { job.progress(current: 1, total: 1) }
        switch work {
        case .failure(let message):
            throw JobError(message)
        case .file(let path, let size, let preallocation):
            try CreateJob.createFile(path, size: size, preallocation: preallocation)
        case .qcow2(let node, let options):
            do {
                try Qcow2Create.format(node, options: options)
            } catch {
                throw JobError("Could not write qcow2 header: \(error.message)")
            }
        }
    }

    /// Creates (or truncates) the file and sizes it, as QEMU's file driver creates images.
    static func createFile(_ path: String, size: UInt64, preallocation: String) throws(JobError) {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw JobError("Could not create '\(path)': \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard ftruncate(fd, 0) == 0, ftruncate(fd, off_t(size)) == 0 else {
            throw JobError("Could not resize file: \(String(cString: strerror(errno)))")
        }
        switch preallocation {
        case "falloc":
            let result = posix_fallocate(fd, 0, off_t(size))
            guard result == 0 else { throw JobError("Could not preallocate data for the new file: \(String(cString: strerror(result)))") }
        case "full":
            let zeroes = [UInt8](repeating: 0, count: 1 << 20)
            var offset: UInt64 = 0
            while offset < size {
                let count = Int(min(UInt64(zeroes.count), size - offset))
                guard pwrite(fd, zeroes, count, off_t(offset)) == count else {
                    throw JobError("Could not write zeros for preallocation: \(String(cString: strerror(errno)))")
                }
                offset += UInt64(count)
            }
        default:
            break
        }
        guard fsync(fd) == 0 else { throw JobError("Could not flush the new file: \(String(cString: strerror(errno)))") }
    }
}
