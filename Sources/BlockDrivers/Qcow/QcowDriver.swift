import BlockCore
import Synchronization
import LogOptionsClock

/// The `qcow` (version 1) format driver: guest clusters mapped through L1 and L2 tables onto
/// clusters of the file, compressed clusters (read; rewritten uncompressed when written) and a
/// backing file.
///
/// Concurrency: `tables` guards the L1 table and the L2 cache for the time of a lookup or update;
/// `allocation` serialises every change of the mapping. Writes into allocated clusters take
/// neither beyond the lookup.
///
/// `@unchecked Sendable`: the mutable state is guarded by `tables` or `allocation` as noted.
public final class QcowDriver: BlockDriver, @unchecked Sendable {
    public let driverName = "qcow"
    public let features: DriverFeatures
    let file: BlockNode
    let backingSlot: Mutex<BlockNode?>
    var backing: BlockNode? { backingSlot.withLock { $0 } }
    let tables = MonotonicCondition()
    let allocation = MonotonicCondition()
    public let header: QcowHeader
    /// Guarded by `tables`.
    var l1: [UInt64]
    /// L2 tables by file offset; guarded by `tables`.
    var l2Cache: [UInt64: [UInt64]] = [:]
    let l2CacheLimit: Int
    /// The end of the file as allocation sees it; guarded by `allocation`.
    var fileEnd: UInt64
    let clusterSize: Int
    let clusterBits: Int
    let l2Bits: Int
    let readOnly: Bool

    init(file: BlockNode, backing: BlockNode?, header: QcowHeader, l1: [UInt64], readOnly: Bool) {
        self.file = file
        self.backingSlot = Mutex(backing)
        self.header = header
        self.l1 = l1
        self.readOnly = readOnly
        self.clusterSize = header.clusterSize
        self.clusterBits = Int(header.clusterBits)
        self.l2Bits = Int(header.l2Bits)
        self.l2CacheLimit = max(16, (32 << 20) / (header.l2Entries * 8))
        self.fileEnd = file.length
        var features = DriverFeatures()
        features.fua = .emulated
        features.blockStatus = true
        features.needsFlush = true
        features.writeThresholdOnFile = true
        self.features = features
    }

    public var length: UInt64 { header.size & ~511 }
    public var filename: String { file.driver.filename }
    public var allocatedSize: UInt64? { file.driver.allocatedSize }

    // MARK: - Mapping

    /// What a guest cluster maps to.
    enum ClusterState: Equatable {
        case unallocated
        case data(UInt64)
        case compressed(UInt64)
    }

    /// A run of guest bytes in one state.
    typealias Segment = ClusterRun<ClusterState>

    /// The L2 table at `offset`, loaded into the cache; `tables` is held.
    func l2Table(at offset: UInt64) throws(BlockError) -> [UInt64] {
        if let table = l2Cache[offset] { return table }
        let bytes = header.l2Entries * 8
        guard offset <= file.length, UInt64(bytes) <= file.length - offset else {
            throw .io("qcow: L2 table offset \(offset) lies past the end of the file (\(file.length) bytes)")
        }
        file.debugEvent(.l2Load)
        let table = Qcow2Bytes.words(try ImageBacking.readBytes(file, at: offset, count: bytes, what: "a qcow L2 table"))
        if l2Cache.count >= l2CacheLimit, let victim = l2Cache.keys.first { l2Cache.removeValue(forKey: victim) }
        l2Cache[offset] = table
        return table
    }

    /// The state of guest cluster `cluster`; `tables` is held.
    func state(of cluster: UInt64) throws(BlockError) -> ClusterState {
        let l1Index = Int(cluster >> UInt64(l2Bits))
        guard l1Index < l1.count, l1[l1Index] != 0 else { return .unallocated }
        let entry = try l2Table(at: l1[l1Index])[Int(cluster & UInt64((1 << l2Bits) - 1))]
        if entry == 0 { return .unallocated }
        if entry & QcowHeader.compressedFlag != 0 { return .compressed(entry) }
        guard entry < file.length else {
            throw .io("qcow: cluster offset \(entry) of guest cluster \(cluster) lies past the end of the file (\(file.length) bytes)")
        }
        return .data(entry)
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
                throw .io("qcow: data cluster at \(host) lies past the end of the image file")
            }
            file.debugEvent(.readAio)
            try file.read(into: target, at: host)
        case .unallocated:
            try readBacking(into: target, at: run.offset)
        case .compressed(let entry):
            let cluster = try decompress(entry)
            let intra = Int(run.offset & UInt64(clusterSize - 1))
            cluster.withUnsafeBytes { target.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[intra..<intra + run.length])) }
        }
    }

    /// The bytes of a compressed cluster: the entry holds the compressed length above the offset.
    func decompress(_ entry: UInt64) throws(BlockError) -> [UInt8] {
        let offsetBits = 63 - UInt64(clusterBits)
        let start = entry & ((1 << offsetBits) - 1)
        let count = (entry & ~QcowHeader.compressedFlag) >> offsetBits
        guard count > 0, start < file.length else {
            throw .io("qcow: compressed cluster at \(start) lies past the end of the file")
        }
        let available = min(count, file.length - start)
        file.debugEvent(.readCompressed)
        let input = try ImageBacking.readBytes(file, at: start, count: Int(available), what: "a compressed qcow cluster")
        var output = [UInt8](repeating: 0, count: clusterSize)
        do {
            try input.withBytes { (source) throws(BlockError) in
                try output.withMutableBytes { (target) throws(BlockError) in try Qcow2Compression.inflate(source, into: target) }
            }
        } catch {
            throw .io("qcow: the compressed cluster at \(start) is damaged")
        }
        return output
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
            case .compressed:
                extents.appendMerging(.data(UInt64(run.length)))
            case .unallocated:
                for extent in try ImageBacking.status(of: backing, at: run.offset, length: UInt64(run.length)) { extents.appendMerging(extent) }
            }
        }
        return extents
    }


    public func flush() throws(BlockError) {
        try file.flush()
    }
}

extension QcowDriver.ClusterState: ClusterMapping {
    func advanced(by bytes: UInt64) -> Self {
        if case .data(let host) = self { return .data(host + bytes) }
        return self
    }

    func continues(length: Int, with next: Self) -> Bool {
        switch (self, next) {
        case (.data(let host), .data(let following)): return host + UInt64(length) == following
        case (.unallocated, .unallocated): return true
        default: return false
        }
    }
}
