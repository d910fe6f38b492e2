import BlockCore
import Synchronization
import LogOptionsClock

/// The `qed` format driver: guest clusters mapped through an L1 and L2 tables onto clusters of the
/// file, with zero clusters and a backing file; QED_F_NEED_CHECK is set while the image is open
/// read-write, so an image left by a crash is checked at its next open.
///
/// Concurrency: `tables` guards the header, L1 and L2 cache for the short time of a lookup or an
/// update; `allocation` serialises every change of the mapping (allocating writes, zero-writes,
/// resize). Writes into clusters already allocated take neither beyond the lookup.
///
/// `@unchecked Sendable`: the mutable state is guarded by `tables` or `allocation` as noted.
public final class QedDriver: BlockDriver, BackingChain, @unchecked Sendable {
    public let driverName = "qed"
    public let features: DriverFeatures
    let file: BlockNode
    let backingSlot: Mutex<BlockNode?>
    var backing: BlockNode? { backingSlot.withLock { $0 } }
    let tables = MonotonicCondition()
    let allocation = MonotonicCondition()
    /// Guarded by `tables`.
    var headerState: QedHeader
    /// Guarded by `tables`.
    var l1: [UInt64]
    /// L2 tables by file offset; guarded by `tables`.
    var l2Cache: [UInt64: [UInt64]] = [:]
    let l2CacheLimit: Int
    /// Where the next cluster is allocated; guarded by `allocation`.
    var fileEnd: UInt64
    let size: Atomic<UInt64>
    let clusterSize: Int
    let clusterBits: Int
    let l2Bits: Int
    let readOnly: Bool

    init(file: BlockNode, backing: BlockNode?, header: QedHeader, l1: [UInt64], readOnly: Bool) {
        self.file = file
        self.backingSlot = Mutex(backing)
        self.headerState = header
        self.l1 = l1
        self.readOnly = readOnly
        self.clusterSize = Int(header.clusterSize)
        self.clusterBits = header.clusterBits
        self.l2Bits = header.tableEntries.trailingZeroBitCount
        self.l2CacheLimit = max(8, (64 << 20) / header.tableBytes)
        self.size = Atomic(header.imageSize)
        let mask = UInt64(header.clusterSize) - 1
        self.fileEnd = (file.length + mask) & ~mask
        var features = DriverFeatures()
        features.fua = .emulated
        features.fastZero = true
        features.blockStatus = true
        features.needsFlush = true
        features.writeThresholdOnFile = true
        self.features = features
    }

    public var length: UInt64 { size.load(ordering: .relaxed) }
    public var filename: String { file.driver.filename }
    public var allocatedSize: UInt64? { file.driver.allocatedSize }
    /// The image header as it is now.
    public var header: QedHeader {
        tables.lock()
        defer { tables.unlock() }
        return headerState
    }

    // MARK: - Mapping

    /// What a guest cluster maps to.
    enum ClusterState: Equatable {
        case unallocated
        case zero
        case data(UInt64)
    }

    /// A run of guest bytes in one state.
    typealias Segment = ClusterRun<ClusterState>

    /// The L2 table at `offset`, loaded into the cache; `tables` is held.
    func l2Table(at offset: UInt64) throws(BlockError) -> [UInt64] {
        if let table = l2Cache[offset] { return table }
        guard offset % UInt64(clusterSize) == 0, offset <= file.length,
              UInt64(headerState.tableBytes) <= file.length - offset else {
            throw .io("qed: L2 table offset \(offset) is invalid (file of \(file.length) bytes)")
        }
        file.debugEvent(.l2Load)
        let table = LittleEndian.words(try ImageBacking.readBytes(file, at: offset, count: headerState.tableBytes, what: "a qed L2 table"))
        if l2Cache.count >= l2CacheLimit, let victim = l2Cache.keys.first { l2Cache.removeValue(forKey: victim) }
        l2Cache[offset] = table
        return table
    }

    /// The state of guest cluster `cluster`; `tables` is held.
    func state(of cluster: UInt64) throws(BlockError) -> ClusterState {
        let l1Index = Int(cluster >> UInt64(l2Bits))
        guard l1Index < l1.count else { return .unallocated }
        let l2Offset = l1[l1Index]
        guard l2Offset != 0 else { return .unallocated }
        let entry = try l2Table(at: l2Offset)[Int(cluster & UInt64((1 << l2Bits) - 1))]
        switch entry {
        case 0: return .unallocated
        case QedHeader.zeroCluster: return .zero
        default:
            guard entry % UInt64(clusterSize) == 0, entry < file.length else {
                throw .io("qed: cluster offset \(entry) of guest cluster \(cluster) is invalid (file of \(file.length) bytes)")
            }
            return .data(entry)
        }
    }

    /// The runs covering a guest range.
    func segments(at offset: UInt64, length: Int) throws(BlockError) -> [Segment] {
        tables.lock()
        defer { tables.unlock() }
        return try ClusterRuns.split(at: offset, length: length, clusterBits: clusterBits) { (cluster) throws(BlockError) in
            try state(of: cluster)
        }
    }

    // MARK: - Reads

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        for run in try segments(at: offset, length: buffer.count) {
            let start = Int(run.offset - offset)
            try readRun(run, into: UnsafeMutableRawBufferPointer(rebasing: buffer[start..<start + run.length]))
        }
    }

    func readRun(_ run: Segment, into target: UnsafeMutableRawBufferPointer) throws(BlockError) {
        switch run.state {
        case .data(let host):
            guard host + UInt64(run.length) <= file.length else {
                throw .io("qed: data cluster at \(host) lies past the end of the image file")
            }
            file.debugEvent(.readAio)
            try file.read(into: target, at: host)
        case .zero:
            target.initializeMemory(as: UInt8.self, repeating: 0)
        case .unallocated:
            try readBacking(into: target, at: run.offset)
        }
    }

    /// Reads from the backing node; what lies past its end (or without one) reads as zeroes.
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

    // MARK: - Status

    public func blockStatus(at offset: UInt64, length count: UInt64) throws(BlockError) -> [Extent] {
        let limit = min(count, UInt64(clusterSize) << UInt64(l2Bits))
        var extents: [Extent] = []
        for run in try segments(at: offset, length: Int(limit)) {
            switch run.state {
            case .data(let host):
                extents.appendMerging(.data(UInt64(run.length), hostOffset: host))
            case .zero:
                extents.appendMerging(Extent(length: UInt64(run.length), zero: true, hole: true, depth: 0))
            case .unallocated:
                for extent in try ImageBacking.status(of: backing, at: run.offset, length: UInt64(run.length)) { extents.appendMerging(extent) }
            }
        }
        return extents
    }


    // MARK: - Flush and lifetime

    public func flush() throws(BlockError) {
        try file.flush()
    }

    /// Sets or clears QED_F_NEED_CHECK in the image, durably.
    func setNeedCheck(_ on: Bool) throws(BlockError) {
        tables.lock()
        var header = headerState
        tables.unlock()
        if on { header.features |= QedHeader.needCheckFeature } else { header.features &= ~QedHeader.needCheckFeature }
        try file.flush()
        try writeFile(header.serialized(), at: 0)
        try file.flush()
        tables.lock()
        headerState = header
        tables.unlock()
    }

    public func close() {
        guard !readOnly else { return }
        allocation.lock()
        defer { allocation.unlock() }
        do {
            try setNeedCheck(false)
        } catch {
            Log.error("qed: marking '\(filename)' clean at close failed: \(error.message)")
        }
    }

    /// Writes bytes into the image file, growing it when they end past its end.
    func writeFile(_ bytes: [UInt8], at offset: UInt64) throws(BlockError) {
        if offset + UInt64(bytes.count) > file.length { try file.resize(to: offset + UInt64(bytes.count)) }
        try bytes.withBytes { (raw) throws(BlockError) in try file.write(raw, at: offset, fua: false) }
    }

    // MARK: - Backing chain

    public var backingNode: BlockNode? { backing }

    public func writeBackingName(_ name: String?, format: String?) throws(BlockError) {
        guard !readOnly else { throw .notPermitted("the image is read-only") }
        allocation.lock()
        defer { allocation.unlock() }
        tables.lock()
        var header = headerState
        tables.unlock()
        let oldEnd = header.backingFile.map { Int(header.backingNameOffset) + $0.utf8.count } ?? QedHeader.length
        header.features &= ~(QedHeader.backingFileFeature | QedHeader.noProbeFeature)
        header.backingFile = nil
        header.backingNameOffset = 0
        header.backingNameSize = 0
        if let name, !name.isEmpty {
            header.features |= QedHeader.backingFileFeature
            if format == "raw" { header.features |= QedHeader.noProbeFeature }
            header.backingFile = name
            header.backingNameOffset = UInt32(QedHeader.length)
            header.backingNameSize = UInt32(name.utf8.count)
        }
        var bytes = header.serializedWithName()
        guard UInt64(bytes.count) <= UInt64(header.headerSize) * UInt64(header.clusterSize) else {
            throw .invalid("the backing file name does not fit in the qed header")
        }
        if bytes.count < oldEnd { bytes += [UInt8](repeating: 0, count: oldEnd - bytes.count) }
        try writeFile(bytes, at: 0)
        try file.flush()
        tables.lock()
        headerState = header
        tables.unlock()
    }

    public func setBackingNode(_ node: BlockNode?) {
        backingSlot.withLock { $0 = node }
    }
}

extension QedDriver.ClusterState: ClusterMapping {
    func advanced(by bytes: UInt64) -> Self {
        if case .data(let host) = self { return .data(host + bytes) }
        return self
    }

    func continues(length: Int, with next: Self) -> Bool {
        switch (self, next) {
        case (.data(let host), .data(let following)): return host + UInt64(length) == following
        case (.zero, .zero), (.unallocated, .unallocated): return true
        default: return false
        }
    }
}
