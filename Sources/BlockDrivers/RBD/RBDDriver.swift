#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import CRBD
import LogOptionsClock
import Synchronization

/// The `rbd` driver: an image in a Ceph RBD pool, through librbd loaded at run time (CRBD), so that
/// blockd runs where Ceph is not installed and says so only when an rbd node is asked for. Requests
/// are librbd's asynchronous ones: the batch engines submit many at once (`AsyncTarget`), the
/// synchronous calls wait for their completion. A writable open takes the image's exclusive lock and
/// keeps it, so a second writer elsewhere fails to open instead of both writing.
public final class RBDDriver: BlockDriver, AsyncTarget, @unchecked Sendable {
    public let driverName = "rbd"
    public let features: DriverFeatures
    public let filename: String
    private let handle: OpaquePointer
    private let size: Atomic<UInt64>
    private let closed = Atomic<Bool>(false)
    public var length: UInt64 { size.load(ordering: .relaxed) }

    private init(handle: OpaquePointer, length: UInt64, filename: String) {
        self.handle = handle
        self.size = Atomic(length)
        self.filename = filename
        var features = DriverFeatures()
        features.fua = .emulated
        features.discard = true
        features.blockStatus = true
        features.maxTransfer = 32 << 20
        features.multiConnSafe = true
        self.features = features
    }

    /// The opener of `driver=rbd`.
    public static let opener: DriverOpener = { options, context throws(OptionError) in
        let settings = try RBDSettings.read(options)
        let readOnly = context.common.readOnly || settings.snapshot != nil
        if settings.snapshot != nil && !context.common.readOnly {
            throw options.failure("rbd: a snapshot can only be opened read-only (read-only=on)")
        }
        var error = [CChar](repeating: 0, count: 512)
        guard blk_rbd_load(&error, error.count) == 0 else { throw options.failure("rbd: \(RBDDriver.text(error))") }
        let pairs = settings.confPairs.flatMap { [strdup($0.0), strdup($0.1)] }
        defer { for pointer in pairs { free(pointer) } }
        var pointers = pairs.map { UnsafePointer<CChar>($0) }
        var handle: OpaquePointer?
        let result = pointers.withUnsafeMutableBufferPointer { list in
            blk_rbd_open(settings.conf, settings.user, list.baseAddress, Int32(settings.confPairs.count), settings.pool,
                         settings.namespace, settings.image, settings.snapshot, readOnly ? 1 : 0, &handle, &error, error.count)
        }
        guard result == 0, let handle else { throw options.failure("rbd: \(RBDDriver.text(error))") }
        if !readOnly {
            let locked = blk_rbd_lock_exclusive(handle)
            if locked < 0 && locked != -EOPNOTSUPP {
                blk_rbd_close(handle)
                let reason = locked == -EROFS || locked == -EBUSY
                    ? "the image is locked by another client (exclusive lock)" : String(cString: strerror(-locked))
                throw options.failure("rbd: cannot take the exclusive lock of '\(settings.image)': \(reason)")
            }
        }
        var length: UInt64 = 0
        let sized = blk_rbd_size(handle, &length)
        guard sized == 0 else {
            blk_rbd_close(handle)
            throw options.failure("rbd: cannot read the size of '\(settings.image)': \(String(cString: strerror(-sized)))")
        }
        return OpenedDriver(driver: RBDDriver(handle: handle, length: length, filename: settings.filename))
    }

    /// The text of a NUL-terminated C buffer.
    private static func text(_ buffer: [CChar]) -> String {
        String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    // MARK: - Synchronous calls: an asynchronous request and a wait for its completion

    private func run(_ op: blk_rbd_op, offset: UInt64, length: UInt64, buffer: UnsafeMutableRawPointer?, what: String) throws(BlockError) -> Int64 {
        let waiter = RBDWaiter()
        let context = Unmanaged.passRetained(waiter).toOpaque()
        let started = blk_rbd_submit(handle, Int32(op.rawValue), offset, length, buffer, { context, result in
            let waiter = Unmanaged<RBDWaiter>.fromOpaque(context!).takeRetainedValue()
            waiter.finish(result)
        }, context)
        if started < 0 {
            Unmanaged<RBDWaiter>.fromOpaque(context).release()
            throw BlockError(errno: -started, "rbd: \(what): \(String(cString: strerror(-started)))")
        }
        let result = waiter.wait()
        if result < 0 { throw BlockError(errno: Int32(-result), "rbd: \(what): \(String(cString: strerror(Int32(-result))))") }
        return result
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        let done = try run(BLK_RBD_READ, offset: offset, length: UInt64(buffer.count), buffer: base, what: "read")
        // librbd reads past the end of the image as short; the rest reads as zeroes.
        if done < buffer.count { memset(base + Int(done), 0, buffer.count - Int(done)) }
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        _ = try run(BLK_RBD_WRITE, offset: offset, length: UInt64(buffer.count), buffer: UnsafeMutableRawPointer(mutating: base), what: "write")
        if fua { try flush() }
    }

    public func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockError) {
        _ = try run(BLK_RBD_WRITE_ZEROES, offset: offset, length: length, buffer: nil, what: "write zeroes")
    }

    public func discard(at offset: UInt64, length: UInt64) throws(BlockError) {
        _ = try run(BLK_RBD_DISCARD, offset: offset, length: length, buffer: nil, what: "discard")
    }

    public func flush() throws(BlockError) {
        _ = try run(BLK_RBD_FLUSH, offset: 0, length: 0, buffer: nil, what: "flush")
    }

    public func resize(to newLength: UInt64) throws(BlockError) {
        let result = blk_rbd_resize(handle, newLength)
        guard result == 0 else { throw BlockError(errno: -result, "rbd: resize: \(String(cString: strerror(-result)))") }
        size.store(newLength, ordering: .relaxed)
    }

    /// Allocated extents from `rbd_diff_iterate2` (against nothing: every written object), the gaps as holes.
    public func blockStatus(at offset: UInt64, length: UInt64) throws(BlockError) -> [Extent] {
        let end = min(offset + length, self.length)
        guard end > offset else { return [.hole(length)] }
        let walk = RBDExtentWalk(start: offset)
        let result = blk_rbd_diff(handle, offset, end - offset, { extentOffset, extentLength, exists, context in
            Unmanaged<RBDExtentWalk>.fromOpaque(context!).takeUnretainedValue().add(extentOffset, UInt64(extentLength), exists != 0)
            return 0
        }, Unmanaged.passUnretained(walk).toOpaque())
        guard result == 0 else { throw BlockError(errno: -result, "rbd: block status: \(String(cString: strerror(-result)))") }
        walk.add(end, 0, false)
        return walk.extents.isEmpty ? [.hole(end - offset)] : walk.extents
    }

    /// The image's own snapshots: name, id and size (query-named-block-nodes lists them as QEMU does).
    public func snapshots() -> [(name: String, id: UInt64, size: UInt64)] {
        let list = RBDSnapshotList()
        _ = blk_rbd_snapshots(handle, { name, id, size, context in
            Unmanaged<RBDSnapshotList>.fromOpaque(context!).takeUnretainedValue().items.append((String(cString: name!), id, size))
        }, Unmanaged.passUnretained(list).toOpaque())
        return list.items
    }

    public func directTarget(at offset: UInt64, length: Int) -> DirectTarget? {
        DirectTarget(remote: self, offset: offset)
    }

    // MARK: - AsyncTarget

    public func submitRead(into buffer: UnsafeMutableRawPointer, length: Int, at offset: UInt64, token: Int, completions: AsyncCompletions) {
        submit(BLK_RBD_READ, buffer: buffer, length: length, offset: offset, post: RBDPost(token: token, completions: completions, zeroFill: (buffer, length)))
    }

    public func submitWrite(from buffer: UnsafeRawPointer, length: Int, at offset: UInt64, fua: Bool, token: Int, completions: AsyncCompletions) {
        if fua {
            // librbd has no FUA: the write and a flush, before the result is posted.
            do throws(BlockError) {
                try write(UnsafeRawBufferPointer(start: buffer, count: length), at: offset, fua: true)
                completions.post(token: token, result: Int32(length))
            } catch {
                completions.post(token: token, result: -error.errno)
            }
            return
        }
        submit(BLK_RBD_WRITE, buffer: UnsafeMutableRawPointer(mutating: buffer), length: length, offset: offset,
               post: RBDPost(token: token, completions: completions, zeroFill: nil))
    }

    private func submit(_ op: blk_rbd_op, buffer: UnsafeMutableRawPointer, length: Int, offset: UInt64, post: RBDPost) {
        let context = Unmanaged.passRetained(post).toOpaque()
        let started = blk_rbd_submit(handle, Int32(op.rawValue), offset, UInt64(length), buffer, { context, result in
            Unmanaged<RBDPost>.fromOpaque(context!).takeRetainedValue().deliver(result)
        }, context)
        if started < 0 {
            Unmanaged<RBDPost>.fromOpaque(context).release()
            post.completions.post(token: post.token, result: started)
        }
    }

    public func close() {
        guard !closed.exchange(true, ordering: .relaxed) else { return }
        blk_rbd_close(handle)
    }
}

/// One synchronous request's wait for its librbd completion.
private final class RBDWaiter: @unchecked Sendable {
    private let semaphore = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)
    private var result: Int64 = 0

    init() { sem_init(semaphore, 0, 0) }

    deinit {
        sem_destroy(semaphore)
        semaphore.deallocate()
    }

    func finish(_ value: Int64) {
        result = value
        sem_post(semaphore)
    }

    func wait() -> Int64 {
        while sem_wait(semaphore) != 0 && errno == EINTR {}
        return result
    }
}

/// Where an asynchronous request's result goes.
private final class RBDPost: @unchecked Sendable {
    let token: Int
    let completions: AsyncCompletions
    /// A read's buffer, whose tail past a short read is zeroed.
    let zeroFill: (UnsafeMutableRawPointer, Int)?

    init(token: Int, completions: AsyncCompletions, zeroFill: (UnsafeMutableRawPointer, Int)?) {
        self.token = token
        self.completions = completions
        self.zeroFill = zeroFill
    }

    func deliver(_ result: Int64) {
        if let (buffer, length) = zeroFill, result >= 0, result < length {
            memset(buffer + Int(result), 0, length - Int(result))
            completions.post(token: token, result: Int32(length))
            return
        }
        completions.post(token: token, result: Int32(clamping: result))
    }
}

/// Collects the extents `rbd_diff_iterate2` reports, in order, filling the gaps with holes.
private final class RBDExtentWalk {
    private var position: UInt64
    private(set) var extents: [Extent] = []

    init(start: UInt64) { position = start }

    func add(_ offset: UInt64, _ length: UInt64, _ exists: Bool) {
        if offset > position { append(.hole(offset - position)) }
        guard length > 0 else { return }
        let start = max(offset, position)
        let end = offset + length
        guard end > start else { return }
        append(exists ? .data(end - start) : .hole(end - start))
        position = end
    }

    private func append(_ extent: Extent) {
        if let last = extents.last, last.hole == extent.hole, last.zero == extent.zero {
            extents[extents.count - 1].length += extent.length
        } else {
            extents.append(extent)
        }
    }
}

/// The snapshots `blk_rbd_snapshots` reports.
private final class RBDSnapshotList {
    var items: [(name: String, id: UInt64, size: UInt64)] = []
}
