#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import Dispatch
import Synchronization
import LogOptionsClock

/// The `qcow2` format driver: guest clusters mapped through L1/L2 tables onto host clusters counted by
/// refcounts, with a backing chain, zero and compressed clusters.
///
/// Concurrency: the metadata (tables, caches, refcounts) is guarded by one lock held only while
/// mappings are looked up or changed; data moves without it. Writes that allocate mark their guest
/// clusters in flight, so only requests on the same clusters wait for them.
///
/// `@unchecked Sendable`: `meta` and `inflight` are guarded by `lock` (a condition, because requests
/// wait on in-flight clusters), `cleaner` is set once before the node is shared, and the rest is
/// immutable or atomic.
public final class Qcow2Driver: BlockDriver, @unchecked Sendable {
    public let driverName = "qcow2"
    public let features: DriverFeatures
    let file: BlockNode
    /// The backing node; changed live by a stream, commit or blockdev-snapshot (Qcow2Driver+Backing.swift).
    let backingSlot: Mutex<BlockNode?>
    var backing: BlockNode? { backingSlot.withLock { $0 } }
    let lock = MonotonicCondition()
    /// Guarded by `lock`.
    let meta: Qcow2Metadata
    /// Guest clusters being allocated; guarded by `lock`.
    var inflight = Set<UInt64>()
    /// Requests between mapping and completion; cluster releases wait until it is zero.
    let activeIO = Atomic<Int>(0)
    let size: Atomic<UInt64>
    let clusterBits: UInt64
    let clusterSize: Int
    let readOnly: Bool
    /// The `cache-clean-interval` timer; guarded by being set once before the node is shared.
    private var cleaner: DispatchSourceTimer?
    /// The persistent dirty bitmaps (Qcow2Driver+Bitmaps.swift); guarded by `lock`.
    let bitmapState = Qcow2BitmapState()

    init(file: BlockNode, backing: BlockNode?, meta: Qcow2Metadata, readOnly: Bool, discard: Bool) {
        self.file = file
        self.backingSlot = Mutex(backing)
        self.meta = meta
        self.readOnly = readOnly
        self.clusterBits = UInt64(meta.clusterBits)
        self.clusterSize = meta.clusterSize
        // A size that is not a multiple of 512 is rounded down, as QEMU's block layer does.
        self.size = Atomic(meta.header.size & ~511)
        var features = DriverFeatures()
        features.fua = .emulated
        features.fastZero = meta.header.version >= 3
        features.discard = discard
        features.needsFlush = true
        features.blockStatus = true
        features.multiConnSafe = true
        features.maxTransfer = 32 << 20
        features.writeThresholdOnFile = true
        self.features = features
    }

    public var length: UInt64 { size.load(ordering: .relaxed) }
    public var filename: String { file.driver.filename }
    public var allocatedSize: UInt64? { file.driver.allocatedSize }
    /// The image header as it is now.
    public var header: Qcow2Header {
        lock.lock()
        defer { lock.unlock() }
        return meta.header
    }

    // MARK: - Mapping

    /// A run of guest bytes in one state (data runs are contiguous on the host).
    struct Segment {
        var offset: UInt64
        var length: Int
        var state: Qcow2ClusterState
    }

    /// The runs covering a guest range; the lock is held.
    func segments(at offset: UInt64, length: Int) throws(BlockError) -> [Segment] {
        var result: [Segment] = []
        var position = offset
        let end = offset + UInt64(length)
        let mask = UInt64(clusterSize - 1)
        while position < end {
            let intra = position & mask
            let chunk = Int(min(end - position, UInt64(clusterSize) - intra))
            var state = meta.state(of: try meta.l2Entry(position >> clusterBits))
            switch state {
            case .data(let host, let owned): state = .data(host: host + intra, owned: owned)
            case .zero(let host?): state = .zero(host: host + intra)
            default: break
            }
            if var last = result.last, Qcow2Driver.continues(last, with: state) {
                last.length += chunk
                result[result.count - 1] = last
            } else {
                result.append(Segment(offset: position, length: chunk, state: state))
            }
            position += UInt64(chunk)
        }
        return result
    }

    private static func continues(_ segment: Segment, with state: Qcow2ClusterState) -> Bool {
        switch (segment.state, state) {
        case (.data(let host, let owned), .data(let next, let nextOwned)):
            return owned == nextOwned && host + UInt64(segment.length) == next
        case (.zero(nil), .zero(nil)), (.unallocated, .unallocated):
            return true
        case (.zero(let host?), .zero(let next?)):
            return host + UInt64(segment.length) == next
        default:
            return false
        }
    }

    // MARK: - Reads

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        lock.lock()
        if let entry = try? meta.l2Entry(offset >> clusterBits), case .data(let host, _) = meta.state(of: entry),
           (offset & UInt64(clusterSize - 1)) + UInt64(buffer.count) <= UInt64(clusterSize) {
            // One data cluster: the common case, without building runs.
            activeIO.add(1, ordering: .relaxed)
            lock.unlock()
            defer { activeIO.subtract(1, ordering: .relaxed) }
            let position = host + (offset & UInt64(clusterSize - 1))
            guard position + UInt64(buffer.count) <= file.length else {
                throw .io("qcow2: data cluster at \(host) lies past the end of the image file")
            }
            file.debugEvent(.readAio)
            try file.read(into: buffer, at: position)
            return
        }
        let runs: [Segment]
        do {
            runs = try segments(at: offset, length: buffer.count)
        } catch {
            lock.unlock()
            throw error
        }
        activeIO.add(1, ordering: .relaxed)
        lock.unlock()
        defer { activeIO.subtract(1, ordering: .relaxed) }
        for run in runs {
            let target = UnsafeMutableRawBufferPointer(rebasing: buffer[Int(run.offset - offset)..<Int(run.offset - offset) + run.length])
            try readRun(run, into: target)
        }
    }

    func readRun(_ run: Segment, into target: UnsafeMutableRawBufferPointer) throws(BlockError) {
        switch run.state {
        case .data(let host, _):
            guard host + UInt64(run.length) <= file.length else {
                throw .io("qcow2: data cluster at \(host) lies past the end of the image file")
            }
            file.debugEvent(.readAio)
            try file.read(into: target, at: host)
        case .zero:
            target.initializeMemory(as: UInt8.self, repeating: 0)
        case .unallocated:
            try readBacking(into: target, at: run.offset)
        case .compressed(let descriptor):
            let cluster = try decompress(descriptor)
            let intra = Int(run.offset & UInt64(clusterSize - 1))
            cluster.withUnsafeBytes { target.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[intra..<intra + run.length])) }
        }
    }

    /// Reads from the backing node; what lies past its end reads as zeroes.
    func readBacking(into target: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        guard let backing, offset < backing.length else {
            target.initializeMemory(as: UInt8.self, repeating: 0)
            return
        }
        file.debugEvent(.readBackingAio)
        let available = Int(min(UInt64(target.count), backing.length - offset))
        try backing.read(into: UnsafeMutableRawBufferPointer(rebasing: target[0..<available]), at: offset)
        if available < target.count {
            UnsafeMutableRawBufferPointer(rebasing: target[available...]).initializeMemory(as: UInt8.self, repeating: 0)
        }
    }

    /// The bytes of a compressed cluster.
    func decompress(_ descriptor: UInt64) throws(BlockError) -> [UInt8] {
        let range = meta.compressedRange(descriptor)
        let end = min(range.upperBound, file.length)
        guard range.lowerBound < end else { throw .io("qcow2: compressed cluster at \(range.lowerBound) lies past the end of the file") }
        file.debugEvent(.readCompressed)
        var input = [UInt8](repeating: 0, count: Int(end - range.lowerBound))
        try input.withMutableBytes { (raw) throws(BlockError) in try file.read(into: raw, at: range.lowerBound) }
        var output = [UInt8](repeating: 0, count: clusterSize)
        try input.withBytes { (source) throws(BlockError) in
            try output.withMutableBytes { (target) throws(BlockError) in try Qcow2Compression.inflate(source, into: target) }
        }
        return output
    }

    /// Where a guest range lies when it is one contiguous run of data in the file (`.file`) or wholly
    /// unallocated within the backing node (`.backing`); nil otherwise.
    private enum Placement { case file(UInt64), backing }

    private func placement(_ offset: UInt64, _ count: Int) -> Placement? {
        let mask = UInt64(clusterSize - 1)
        let end = offset + UInt64(count)
        var position = offset
        var first: Placement?
        var expected: UInt64 = 0
        lock.lock()
        defer { lock.unlock() }
        while position < end {
            guard let entry = try? meta.l2Entry(position >> clusterBits) else { return nil }
            let chunk = min(end - position, UInt64(clusterSize) - (position & mask))
            switch meta.state(of: entry) {
            case .data(let host, _):
                let hostPosition = host + (position & mask)
                if case .backing? = first { return nil }
                if first != nil && hostPosition != expected { return nil }
                if first == nil { first = .file(hostPosition) }
                expected = hostPosition + chunk
            case .unallocated:
                if case .file? = first { return nil }
                first = .backing
            default:
                return nil
            }
            position += chunk
        }
        return first
    }

    public func mappedBytes(at offset: UInt64, length count: Int) -> UnsafeRawPointer? {
        switch placement(offset, count) {
        case .file(let host)?:
            guard host + UInt64(count) <= file.length else { return nil }
            return file.mappedBytes(at: host, length: count)
        case .backing?:
            guard let backing, offset + UInt64(count) <= backing.length else { return nil }
            return backing.mappedBytes(at: offset, length: count)
        case nil:
            return nil
        }
    }

    /// The image file's direct path (`aio=native`, O_DIRECT) for a range that is one contiguous run of
    /// data clusters this image owns (refcount 1, COPIED): a read, or an in-place overwrite as QEMU
    /// does for such clusters, needs no metadata. Anything else goes through `read`/`write`.
    public func directTarget(at offset: UInt64, length count: Int) -> DirectTarget? {
        guard count > 0, count <= clusterSize, let host = ownedRun(offset, count),
              let target = file.directTarget(at: host, length: count),
              host % UInt64(target.alignment) == 0, count % target.alignment == 0 else { return nil }
        return target
    }

    /// The host offset of a range that lies in at most two owned data clusters, contiguous in the file.
    private func ownedRun(_ offset: UInt64, _ count: Int) -> UInt64? {
        let mask = UInt64(clusterSize - 1)
        let end = offset + UInt64(count)
        var position = offset
        var start: UInt64?
        var expected: UInt64 = 0
        lock.lock()
        defer { lock.unlock() }
        while position < end {
            guard let entry = try? meta.l2Entry(position >> clusterBits),
                  case .data(let host, owned: true) = meta.state(of: entry) else { return nil }
            let hostPosition = host + (position & mask)
            if start != nil && hostPosition != expected { return nil }
            if start == nil { start = hostPosition }
            let chunk = min(end - position, UInt64(clusterSize) - (position & mask))
            expected = hostPosition + chunk
            position += chunk
        }
        guard let start, start + UInt64(count) <= file.length else { return nil }
        return start
    }

    public func mappedRuns(at offset: UInt64, length count: Int, limit: Int, into runs: inout [UnsafeRawBufferPointer]) -> Bool {
        lock.lock()
        let found = try? segments(at: offset, length: count)
        lock.unlock()
        guard let found, found.count <= limit else { return false }
        let start = runs.count
        for run in found {
            guard mapRun(run, limit: limit - (runs.count - start), into: &runs) else {
                runs.removeSubrange(start...)
                return false
            }
        }
        return true
    }

    /// Appends the mapped pieces of one run: the image file's, zeroes, or the backing node's.
    private func mapRun(_ run: Segment, limit: Int, into runs: inout [UnsafeRawBufferPointer]) -> Bool {
        switch run.state {
        case .data(let host, _):
            guard host + UInt64(run.length) <= file.length else { return false }
            return file.mappedRuns(at: host, length: run.length, limit: limit, into: &runs)
        case .zero:
            return appendZeroes(run.length, limit: limit, into: &runs)
        case .unallocated:
            let inBacking = backing.map { Int(min(UInt64(run.length), $0.length > run.offset ? $0.length - run.offset : 0)) } ?? 0
            let before = runs.count
            if inBacking > 0, !backing!.mappedRuns(at: run.offset, length: inBacking, limit: limit, into: &runs) { return false }
            return appendZeroes(run.length - inBacking, limit: limit - (runs.count - before), into: &runs)
        case .compressed:
            return false
        }
    }

    private func appendZeroes(_ count: Int, limit: Int, into runs: inout [UnsafeRawBufferPointer]) -> Bool {
        var left = count
        var pieces = 0
        while left > 0 {
            guard pieces < limit else { return false }
            let chunk = min(left, ZeroBlock.size)
            runs.append(UnsafeRawBufferPointer(rebasing: ZeroBlock.bytes[0..<chunk]))
            left -= chunk
            pieces += 1
        }
        return true
    }

    // MARK: - Writes

    /// Waits until no cluster of `range` is being allocated; the lock is held.
    func waitForInflight(_ range: ClosedRange<UInt64>) {
        while !inflight.isEmpty && range.contains(where: { inflight.contains($0) }) { lock.wait() }
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        guard buffer.count > 0 else { return }
        let clusters = (offset >> clusterBits)...((offset + UInt64(buffer.count) - 1) >> clusterBits)
        lock.lock()
        if meta.corrupt {
            lock.unlock()
            throw .io("qcow2: the image is marked corrupt; writes are refused")
        }
        waitForInflight(clusters)
        var owned = true
        var entries: [UInt64] = []
        entries.reserveCapacity(clusters.count)
        do {
            for cluster in clusters {
                let entry = try meta.l2Entry(cluster)
                entries.append(entry)
                if case .data(let host, true) = meta.state(of: entry) {
                    // Written in place: never over metadata that a damaged entry points at, and never
                    // past the end of the file node (an image whose last cluster was cut short grows).
                    try meta.checkOverlap(host, count: 1)
                    try meta.ensureFileLength(host + UInt64(clusterSize))
                    continue
                }
                owned = false
            }
        } catch {
            lock.unlock()
            throw error
        }
        if owned {
            activeIO.add(1, ordering: .relaxed)
            lock.unlock()
            defer { activeIO.subtract(1, ordering: .relaxed) }
            try writeInPlace(buffer, at: offset, entries: entries)
            return
        }
        try allocatingWrite(buffer, at: offset, clusters: clusters, entries: entries)
    }

    /// Writes into clusters the active tables own; host runs that are contiguous go out as one write.
    private func writeInPlace(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, entries: [UInt64]) throws(BlockError) {
        var done = 0
        var index = 0
        let mask = UInt64(clusterSize - 1)
        while done < buffer.count {
            let position = offset + UInt64(done)
            file.debugEvent(.writeAio)
            let host = (entries[index] & Qcow2Metadata.offsetMask) + (position & mask)
            var count = min(buffer.count - done, clusterSize - Int(position & mask))
            index += 1
            while done + count < buffer.count, (entries[index] & Qcow2Metadata.offsetMask) == host + UInt64(count) {
                count += min(buffer.count - done - count, clusterSize)
                index += 1
            }
            try file.write(UnsafeRawBufferPointer(rebasing: buffer[done..<done + count]), at: host, fua: false)
            done += count
        }
    }

    /// Allocates new host clusters for the clusters of a write that the active tables do not own,
    /// fills them (with the old contents around the written part), then points the tables at them.
    private func allocatingWrite(
        _ buffer: UnsafeRawBufferPointer, at offset: UInt64, clusters: ClosedRange<UInt64>, entries: [UInt64]
    ) throws(BlockError) {
        // The lock is held on entry.
        let needs = entries.map { entry -> Bool in
            if case .data(_, true) = meta.state(of: entry) { return false }
            return true
        }
        let count = needs.filter { $0 }.count
        for cluster in clusters { inflight.insert(cluster) }
        let hostStart: UInt64
        do {
            hostStart = try meta.allocate(count)
            try meta.checkOverlap(hostStart, count: count)
        } catch {
            for cluster in clusters { inflight.remove(cluster) }
            lock.broadcast()
            lock.unlock()
            throw error
        }
        activeIO.add(1, ordering: .relaxed)
        lock.unlock()
        var hosts: [UInt64] = []
        var failure: BlockError?
        do {
            hosts = try fillClusters(buffer, at: offset, clusters: clusters, entries: entries, needs: needs, hostStart: hostStart)
        } catch {
            failure = error
        }
        lock.lock()
        defer {
            for cluster in clusters { inflight.remove(cluster) }
            lock.broadcast()
            lock.unlock()
            activeIO.subtract(1, ordering: .relaxed)
        }
        if let failure {
            for index in 0..<UInt64(count) { try? meta.setRefcount((hostStart >> clusterBits) + index, 0) }
            throw failure
        }
        var next = 0
        for (index, cluster) in clusters.enumerated() where needs[index] {
            try meta.replaceEntry(cluster, with: hosts[next] | Qcow2Metadata.copiedFlag)
            next += 1
        }
    }

    /// Writes the payload and copy-on-write data into the new clusters; returns their host offsets.
    private func fillClusters(
        _ buffer: UnsafeRawBufferPointer, at offset: UInt64, clusters: ClosedRange<UInt64>, entries: [UInt64], needs: [Bool],
        hostStart: UInt64
    ) throws(BlockError) -> [UInt64] {
        var hosts: [UInt64] = []
        var scratch: [UInt8] = []
        let end = offset + UInt64(buffer.count)
        for (index, cluster) in clusters.enumerated() {
            let clusterStart = cluster << clusterBits
            let from = max(offset, clusterStart)
            let to = min(end, clusterStart + UInt64(clusterSize))
            let payload = UnsafeRawBufferPointer(rebasing: buffer[Int(from - offset)..<Int(to - offset)])
            guard needs[index] else {
                let host = (entries[index] & Qcow2Metadata.offsetMask) + (from - clusterStart)
                try file.write(payload, at: host, fua: false)
                continue
            }
            let host = hostStart + UInt64(hosts.count) * UInt64(clusterSize)
            hosts.append(host)
            if payload.count == clusterSize {
                file.debugEvent(.writeAio)
                try file.write(payload, at: host, fua: false)
                continue
            }
            if scratch.isEmpty { scratch = [UInt8](repeating: 0, count: clusterSize) }
            file.debugEvent(.cowRead)
            try scratch.withMutableBytes { (whole) throws(BlockError) in
                try readRun(Segment(offset: clusterStart, length: clusterSize, state: meta.state(of: entries[index])), into: whole)
                UnsafeMutableRawBufferPointer(rebasing: whole[Int(from - clusterStart)...]).copyMemory(from: payload)
                file.debugEvent(.cowWrite)
                try file.write(UnsafeRawBufferPointer(whole), at: host, fua: false)
            }
        }
        return hosts
    }

    // MARK: - Flush and lifetime

    public func flush() throws(BlockError) {
        lock.lock()
        if meta.hasUnwrittenMetadata {
            defer { lock.unlock() }
            try meta.writeBackAll(canFree: activeIO.load(ordering: .relaxed) == 0)
            return
        }
        lock.unlock()
        try file.flush()
    }

    func startCacheCleaning(every seconds: UInt64) {
        guard seconds > 0 else { return }
        let timer = DispatchSource.makeTimerSource(queue: .global(qos: .utility))
        timer.schedule(deadline: .now() + .seconds(Int(seconds)), repeating: .seconds(Int(seconds)))
        timer.setEventHandler { [weak self] in
            guard let self else { return }
            self.lock.lock()
            self.meta.l2Cache.dropClean()
            self.meta.refcountCache.dropClean()
            self.lock.unlock()
        }
        cleaner = timer
        timer.resume()
    }

    public func close() {
        cleaner?.cancel()
        guard !readOnly else { return }
        lock.lock()
        defer { lock.unlock() }
        do {
            try storeBitmapsAtClose()
            if meta.hasUnwrittenMetadata { try meta.writeBackAll(canFree: true) }
        } catch {
            Log.error("qcow2: writing metadata of '\(filename)' at close failed: \(error.message)")
        }
    }
}
