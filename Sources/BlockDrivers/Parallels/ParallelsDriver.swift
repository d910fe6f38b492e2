import BlockCore
import LogOptionsClock

/// The `parallels` format driver: guest clusters mapped by one table (the BAT) onto clusters of
/// the data area; `in_use` is set while the image is open read-write and cleared at a clean close.
///
/// Concurrency: `tables` guards the BAT and the end of the data for a lookup or an update;
/// `allocation` serialises allocating writes. Writes into allocated clusters take neither beyond
/// the lookup.
///
/// `@unchecked Sendable`: the mutable state is guarded by `tables` or `allocation` as noted.
public final class ParallelsDriver: BlockDriver, @unchecked Sendable {
    public let driverName = "parallels"
    public let features: DriverFeatures
    let file: BlockNode
    let tables = MonotonicCondition()
    let allocation = MonotonicCondition()
    /// Guarded by `tables`.
    var headerState: ParallelsHeader
    /// Guarded by `tables`.
    var bat: [UInt32]
    /// The end of the used data area, in bytes; guarded by `tables`.
    var dataEnd: UInt64
    let clusterSize: UInt64
    let readOnly: Bool

    init(file: BlockNode, header: ParallelsHeader, bat: [UInt32], readOnly: Bool) {
        self.file = file
        self.headerState = header
        self.bat = bat
        self.readOnly = readOnly
        self.clusterSize = header.clusterSize
        var end = header.dataStart
        for entry in bat where entry != 0 {
            end = max(end, UInt64(entry) * header.entryUnit * 512 + header.clusterSize)
        }
        self.dataEnd = end
        var features = DriverFeatures()
        features.fua = .emulated
        features.blockStatus = true
        features.needsFlush = true
        features.writeThresholdOnFile = true
        self.features = features
    }

    public var length: UInt64 { headerState.size }
    public var filename: String { file.driver.filename }
    public var allocatedSize: UInt64? { file.driver.allocatedSize }
    /// The header as it is now.
    public var header: ParallelsHeader {
        tables.lock()
        defer { tables.unlock() }
        return headerState
    }

    /// The file offset of guest cluster `index`, nil when unallocated; `tables` is held.
    func host(of index: Int) -> UInt64? {
        guard index < bat.count, bat[index] != 0 else { return nil }
        return UInt64(bat[index]) * headerState.entryUnit * 512
    }

    /// A run of guest bytes: in the file from `host`, or unallocated (nil).
    struct Segment {
        var offset: UInt64
        var length: Int
        var host: UInt64?
    }

    /// The runs covering a guest range (data runs are contiguous in the file).
    func segments(at offset: UInt64, length: Int) -> [Segment] {
        tables.lock()
        defer { tables.unlock() }
        var result: [Segment] = []
        var position = offset
        let end = offset + UInt64(length)
        while position < end {
            let intra = position % clusterSize
            let chunk = Int(min(end - position, clusterSize - intra))
            let host = self.host(of: Int(position / clusterSize)).map { $0 + intra }
            if var last = result.last,
               (last.host == nil && host == nil) || (last.host != nil && host != nil && last.host! + UInt64(last.length) == host!) {
                last.length += chunk
                result[result.count - 1] = last
            } else {
                result.append(Segment(offset: position, length: chunk, host: host))
            }
            position += UInt64(chunk)
        }
        return result
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        for run in segments(at: offset, length: buffer.count) {
            let start = Int(run.offset - offset)
            let target = UnsafeMutableRawBufferPointer(rebasing: buffer[start..<start + run.length])
            guard let host = run.host else {
                target.initializeMemory(as: UInt8.self, repeating: 0)
                continue
            }
            guard host + UInt64(run.length) <= file.length else {
                throw .io("parallels: cluster at \(host) lies past the end of the image file (\(file.length) bytes)")
            }
            file.debugEvent(.readAio)
            try file.read(into: target, at: host)
        }
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        guard buffer.count > 0 else { return }
        var runs = segments(at: offset, length: buffer.count)
        var locked = false
        if runs.contains(where: { $0.host == nil }) {
            allocation.lock()
            locked = true
            runs = segments(at: offset, length: buffer.count)
        }
        defer { if locked { allocation.unlock() } }
        for run in runs {
            let start = Int(run.offset - offset)
            let payload = UnsafeRawBufferPointer(rebasing: buffer[start..<start + run.length])
            if let host = run.host {
                guard host + UInt64(run.length) <= file.length else {
                    throw .io("parallels: cluster at \(host) lies past the end of the image file (\(file.length) bytes)")
                }
                file.debugEvent(.writeAio)
                try file.write(payload, at: host, fua: false)
            } else {
                try allocate(run, payload)
            }
        }
    }

    /// Allocates clusters at the end of the data for an unallocated run, writes the payload padded
    /// with zeroes to whole clusters, then points the BAT at them; `allocation` is held.
    private func allocate(_ run: Segment, _ payload: UnsafeRawBufferPointer) throws(BlockError) {
        let first = run.offset / clusterSize
        let last = (run.offset + UInt64(run.length) - 1) / clusterSize
        let count = Int(last - first + 1)
        tables.lock()
        let host = dataEnd
        let unit = headerState.entryUnit * 512
        tables.unlock()
        guard host % unit == 0, (host / unit + UInt64(count)) <= UInt64(UInt32.max) else {
            throw .io("parallels: the image is full (cluster offsets no longer fit the BAT)")
        }
        var whole = [UInt8](repeating: 0, count: count * Int(clusterSize))
        try whole.withMutableBytes { (raw) throws(BlockError) in
            let head = Int(run.offset - first * clusterSize)
            UnsafeMutableRawBufferPointer(rebasing: raw[head..<head + payload.count]).copyMemory(from: payload)
            if host + UInt64(raw.count) > file.length { try file.resize(to: host + UInt64(raw.count)) }
            file.debugEvent(.writeAio)
            try file.write(UnsafeRawBufferPointer(raw), at: host, fua: false)
        }
        var entries = [UInt8](repeating: 0, count: count * 4)
        entries.withUnsafeMutableBytes { raw in
            for index in 0..<count {
                LittleEndian.put(UInt32(host / unit) + UInt32(index) * UInt32(clusterSize / unit), raw, index * 4)
            }
        }
        try entries.withBytes { (raw) throws(BlockError) in
            try file.write(raw, at: UInt64(ParallelsHeader.length) + first * 4, fua: false)
        }
        tables.lock()
        for index in 0..<count { bat[Int(first) + index] = UInt32(host / unit) + UInt32(index) * UInt32(clusterSize / unit) }
        dataEnd = host + UInt64(count) * clusterSize
        tables.unlock()
    }

    public func blockStatus(at offset: UInt64, length count: UInt64) throws(BlockError) -> [Extent] {
        var extents: [Extent] = []
        for run in segments(at: offset, length: Int(min(count, clusterSize * 65536))) {
            if let host = run.host {
                extents.appendMerging(.data(UInt64(run.length), hostOffset: host))
            } else {
                extents.appendMerging(.hole(UInt64(run.length)))
            }
        }
        return extents
    }

    public func flush() throws(BlockError) {
        try file.flush()
    }

    /// Writes `in_use` (and the rest of the header), durably.
    func setInUse(_ value: UInt32) throws(BlockError) {
        tables.lock()
        headerState.inUse = value
        let bytes = headerState.serialized()
        tables.unlock()
        try file.flush()
        try bytes.withBytes { (raw) throws(BlockError) in try file.write(raw, at: 0, fua: false) }
        try file.flush()
    }

    public func close() {
        guard !readOnly else { return }
        allocation.lock()
        defer { allocation.unlock() }
        do {
            // As QEMU does: the file ends where the data ends, and the image is marked closed.
            tables.lock()
            let end = dataEnd
            tables.unlock()
            if file.length > end { try file.resize(to: end) }
            try setInUse(0)
        } catch {
            Log.error("parallels: closing '\(filename)' cleanly failed: \(error.message)")
        }
    }
}
