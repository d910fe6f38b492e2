#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import BlockIO
import CBlockShims
import Synchronization
import LogOptionsClock

/// The `file` protocol driver (also `host_device` and `host_cdrom`): a regular file or a block device,
/// read and written with positioned system calls from the calling thread.
public final class FileDriver: BlockDriver {
    public let driverName: String
    public let features: DriverFeatures
    /// The path opened.
    public let path: String
    private let fd: Int32
    private let isBlockDevice: Bool
    private let noFlush: Bool
    private let native: Bool
    private let currentLength: Atomic<UInt64>
    /// A read-only shared mapping of the whole file, so that READ replies are sent straight from the
    /// page cache (one copy instead of two). Only the kernel reads it, inside `sendmsg`, where a failed
    /// page-in becomes an error return rather than a signal. Nil for block devices and O_DIRECT.
    private let mapping: UInt
    private let mappedLength: UInt64
    /// Read-ahead for the mapping when the file's pages come from a device (nil on tmpfs, where a
    /// fault never reads anything, and without a mapping).
    private let readAhead: ReadAhead?
    /// The last data range found by SEEK_DATA/SEEK_HOLE; SEEK_HOLE walks every cached page on tmpfs,
    /// so repeating it per read would cost O(file size). Writes never turn data into holes;
    /// zero-writes and discards clear it.
    private let knownData = Mutex<Range<UInt64>>(0..<0)
    /// Flushes of every connection, shared: one `fdatasync` answers every flush that asked before it began.
    private let flushes = SharedFlush()

    /// Opens `path` with the node's common settings.
    public init(driverName: String, path: String, common: CommonNodeOptions) throws(OptionError) {
        self.driverName = driverName
        self.path = path
        var flags = (common.readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC
        if common.cacheDirect { flags |= blk_o_direct() }
        let fd = open(path, flags)
        guard fd >= 0 else {
            throw OptionError("Could not open '\(path)': \(String(cString: strerror(errno)))")
        }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            let message = String(cString: strerror(errno))
            Glibc.close(fd)
            throw OptionError("could not stat '\(path)': \(message)")
        }
        let isBlockDevice = (info.st_mode & S_IFMT) == S_IFBLK
        var size = UInt64(info.st_size)
        if isBlockDevice {
            guard blk_device_size(fd, &size) == 0 else {
                Glibc.close(fd)
                throw OptionError("could not read the size of block device '\(path)'")
            }
        } else if (info.st_mode & S_IFMT) != S_IFREG {
            Glibc.close(fd)
            throw OptionError("'\(path)' is neither a regular file nor a block device")
        }
        self.fd = fd
        self.isBlockDevice = isBlockDevice
        self.noFlush = common.cacheNoFlush
        self.native = common.aio != "threads"
        self.currentLength = Atomic(size)
        // A writable file may grow (a qcow2 image allocating clusters, a resize): the mapping reserves
        // address space past the end so that grown data is sent from it too. Only bytes below the
        // current length are ever handed out, so the pages past the end are never touched.
        let reserved = common.readOnly ? size : min(1 << 46, max(size * 2, size + (16 << 30)))
        if !isBlockDevice && !common.cacheDirect && size > 0 && size < (1 << 46),
           let base = mmap(nil, Int(reserved), PROT_READ, MAP_SHARED, fd, 0), base != MAP_FAILED {
            self.mapping = UInt(bitPattern: base)
            self.mappedLength = reserved
            if ReadAhead.isDeviceBacked(fd: fd) {
                ReadAhead.adviseRandom(base, length: Int(reserved))
                self.readAhead = ReadAhead(fd: fd, mapping: UInt(bitPattern: base))
            } else {
                self.readAhead = nil
            }
        } else {
            self.mapping = 0
            self.mappedLength = 0
            self.readAhead = nil
        }
        var features = DriverFeatures()
        features.fua = .native
        features.fastZero = true
        features.discard = common.discardUnmap
        features.needsFlush = !common.cacheNoFlush
        features.blockStatus = !isBlockDevice
        features.rotational = isBlockDevice && FileDriver.isRotational(info.st_rdev)
        if common.cacheDirect {
            features.alignment = FileDriver.directIOAlignment(fd: fd, isBlockDevice: isBlockDevice)
        }
        self.features = features
    }

    public var length: UInt64 { currentLength.load(ordering: .relaxed) }

    public var filename: String { path }

    public var allocatedSize: UInt64? {
        var info = stat()
        guard !isBlockDevice, fstat(fd, &info) == 0 else { return nil }
        return UInt64(info.st_blocks) * 512
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        var done = 0
        while done < buffer.count {
            let count = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if count > 0 {
                done += count
            } else if count == 0 {
                // Past the end of a file that shrank underneath us: the rest reads as zeroes.
                (buffer.baseAddress! + done).initializeMemory(as: UInt8.self, repeating: 0, count: buffer.count - done)
                return
            } else if errno != EINTR {
                throw .posix("read \(path) at \(offset + UInt64(done))")
            }
        }
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        var done = 0
        while done < buffer.count {
            let position = offset + UInt64(done)
            let count: Int
            if fua && !noFlush {
                count = blk_pwrite_dsync(fd, buffer.baseAddress! + done, buffer.count - done, position)
                if count < 0 { errno = Int32(-count) }
            } else {
                count = pwrite(fd, buffer.baseAddress! + done, buffer.count - done, off_t(position))
            }
            if count > 0 {
                done += count
            } else if count < 0 && errno != EINTR {
                throw .posix("write \(path) at \(position)")
            }
        }
    }

    public func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockError) {
        forgetData()
        var result: Int32
        if isBlockDevice {
            result = flags.contains(.mayUnmap) && features.discard ? blk_device_discard(fd, offset, length) : -EOPNOTSUPP
            if result != 0 { result = blk_device_zeroout(fd, offset, length) }
        } else {
            result = flags.contains(.mayUnmap) && features.discard ? blk_punch_hole(fd, offset, length) : -EOPNOTSUPP
            if result != 0 { result = blk_zero_range(fd, offset, length) }
            if (result == -EOPNOTSUPP || result == -EINVAL) && flags.contains(.mayUnmap) {
                // Some file systems (tmpfs among them) zero only by punching holes, which only a
                // request that allows deallocation may do; NO_HOLE ranges are written instead.
                result = blk_punch_hole(fd, offset, length)
            }
        }
        if result == -EOPNOTSUPP || result == -EINVAL || result == -ENOTTY {
            throw .notSupported("\(path): no fast zero-write on this file system")
        }
        guard result == 0 else { throw .posix("zero \(path) at \(offset)", errno: -result) }
        if flags.contains(.fua) { try flush() }
    }

    public func discard(at offset: UInt64, length: UInt64) throws(BlockError) {
        forgetData()
        let result = isBlockDevice ? blk_device_discard(fd, offset, length) : blk_punch_hole(fd, offset, length)
        // Discard is advisory: a file system that cannot do it is not an error.
        if result != 0 && result != -EOPNOTSUPP && result != -ENOTTY {
            throw .posix("discard \(path) at \(offset)", errno: -result)
        }
    }

    public func flush() throws(BlockError) {
        guard !noFlush else { return }
        let fd = self.fd
        let result = flushes.run {
            while fdatasync(fd) != 0 {
                guard errno == EINTR else { return errno }
            }
            return 0
        }
        guard result == 0 else { throw .posix("flush \(path)", errno: result) }
    }

    public func blockStatus(at offset: UInt64, length: UInt64) throws(BlockError) -> [Extent] {
        guard !isBlockDevice else { return [.data(length, hostOffset: offset)] }
        let end = offset + length
        let cached = knownData.withLock { $0 }
        if cached.contains(offset) {
            return [.data(min(cached.upperBound, end) - offset, hostOffset: offset)]
        }
        let data = lseek(fd, off_t(offset), 3 /* SEEK_DATA */)
        if data < 0 {
            // ENXIO: no data from here to the end of the file.
            if errno == ENXIO { return [.fileHole(length)] }
            return [.data(length, hostOffset: offset)]
        }
        if UInt64(data) > offset {
            return [.fileHole(min(UInt64(data), end) - offset)]
        }
        let hole = lseek(fd, off_t(offset), 4 /* SEEK_HOLE */)
        guard hole > 0 else { return [.data(length, hostOffset: offset)] }
        knownData.withLock { $0 = offset..<UInt64(hole) }
        return [.data(min(UInt64(hole), end) - offset, hostOffset: offset)]
    }

    private func forgetData() {
        knownData.withLock { $0 = 0..<0 }
    }

    public func prefetch(at offset: UInt64, length: UInt64) throws(BlockError) {
        _ = posix_fadvise(fd, off_t(offset), off_t(length), POSIX_FADV_WILLNEED)
    }

    public func directTarget(at offset: UInt64, length: Int) -> DirectTarget? {
        native && !noFlush ? DirectTarget(fd: fd, offset: offset, alignment: features.alignment) : nil
    }

    public func resize(to newLength: UInt64) throws(BlockError) {
        guard !isBlockDevice else { throw .notSupported("\(path) is a block device; it cannot be resized") }
        while ftruncate(fd, off_t(newLength)) != 0 {
            guard errno == EINTR else { throw .posix("resize \(path) to \(newLength)") }
        }
        forgetData()
        currentLength.store(newLength, ordering: .relaxed)
    }

    public func mappedBytes(at offset: UInt64, length: Int) -> UnsafeRawPointer? {
        guard mapping != 0, offset + UInt64(length) <= min(mappedLength, currentLength.load(ordering: .relaxed)) else { return nil }
        readAhead?.willRead(at: offset, length: length)
        return UnsafeRawPointer(bitPattern: mapping + UInt(offset))
    }

    public func close() {
        if mapping != 0 { munmap(UnsafeMutableRawPointer(bitPattern: mapping), Int(mappedLength)) }
        Glibc.close(fd)
    }

    private static func isRotational(_ device: dev_t) -> Bool {
        let major = (device >> 8) & 0xfff
        let minor = (device & 0xff) | ((device >> 12) & 0xfff00)
        guard let file = fopen("/sys/dev/block/\(major):\(minor)/queue/rotational", "r") else { return false }
        defer { fclose(file) }
        return fgetc(file) == Int32(UInt8(ascii: "1"))
    }

    /// The logical block size O_DIRECT needs; 4096 when it cannot be asked.
    private static func directIOAlignment(fd: Int32, isBlockDevice: Bool) -> Int {
        var info = statvfs()
        if !isBlockDevice, fstatvfs(fd, &info) == 0, info.f_bsize >= 512, info.f_bsize <= 4096 {
            return Int(info.f_bsize)
        }
        return 4096
    }
}

/// Opens `file`, `host_device` and `host_cdrom` nodes.
public enum FileDriverOpener {
    /// The opener for one driver name.
    public static func opener(for name: String) -> DriverOpener {
        { options, context throws(OptionError) in
            let path = try options.requiredString("filename")
            _ = try options.choice("locking", ["auto", "on", "off"])
            _ = try options.bool("x-check-cache-dropped")
            if context.common.aio != "threads" && !URingEngine.isAvailable {
                throw OptionError("\(options.context): aio=\(context.common.aio) needs io_uring, which this kernel does not allow")
            }
            let driver: FileDriver
            do throws(OptionError) {
                driver = try FileDriver(driverName: name, path: path, common: context.common)
            } catch {
                throw options.failure(error.message)
            }
            return OpenedDriver(driver: driver)
        }
    }
}
