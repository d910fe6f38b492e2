import BlockCore
import LogOptionsClock
import Synchronization

/// The `vmdk` format driver: a virtual disk made of extents (flat, sparse, stream-optimized, zero),
/// described by a text descriptor, with a backing file named by `parentFileNameHint`.
///
/// Concurrency: grain directories and tables are guarded by `lock`, held while a grain is looked
/// up and for the whole of an allocating write (so a grain is allocated once); data of allocated
/// grains and flat extents moves without it.
///
/// `@unchecked Sendable`: the extents' table state and `cid` are guarded by `lock`; the rest is
/// immutable or a `Mutex`.
public final class VmdkDriver: BlockDriver, @unchecked Sendable {
    public let driverName = "vmdk"
    public let features: DriverFeatures
    /// The image's `file` child: the monolithic sparse file or the descriptor file.
    let file: BlockNode
    let extents: [VmdkExtent]
    let lock = MonotonicCondition()
    let backingSlot: Mutex<BlockNode?>
    var backing: BlockNode? { backingSlot.withLock { $0 } }
    let readOnly: Bool
    public let length: UInt64
    /// The descriptor as opened.
    public let descriptor: VmdkDescriptor
    /// Where the descriptor text is in `file` and how many bytes of it may be rewritten.
    let descriptorOffset: UInt64
    let descriptorArea: Int
    /// The create type `info` shows (`streamOptimized` for a compressed monolithic extent).
    public let createType: String
    /// The content identifier now (a new one after the first write); guarded by `lock`.
    var cid: UInt32
    private let cidUpdated = Atomic<Bool>(false)
    /// True when the backing file is a vmdk image whose CID is this image's parentCID.
    let parentMatches: Bool

    init(file: BlockNode, extents: [VmdkExtent], descriptor: VmdkDescriptor, descriptorOffset: UInt64, descriptorArea: Int,
         createType: String, backing: BlockNode?, parentMatches: Bool, readOnly: Bool) {
        self.file = file
        self.extents = extents
        self.descriptor = descriptor
        self.descriptorOffset = descriptorOffset
        self.descriptorArea = descriptorArea
        self.createType = createType
        self.backingSlot = Mutex(backing)
        self.parentMatches = parentMatches
        self.readOnly = readOnly
        self.cid = descriptor.cid
        self.length = extents.last?.end ?? 0
        var features = DriverFeatures()
        features.fua = .emulated
        features.blockStatus = true
        features.fastZero = extents.contains { extent in
            if case .flat = extent.kind { return true }
            return extent.zeroGrain && !extent.compressed
        }
        features.alignment = 1
        features.maxTransfer = 32 << 20
        self.features = features
    }

    public var filename: String { file.driver.filename }
    public var allocatedSize: UInt64? {
        var total = file.driver.allocatedSize ?? 0
        var seen: Set<ObjectIdentifier> = [ObjectIdentifier(file)]
        for extent in extents {
            guard let node = extent.file, seen.insert(ObjectIdentifier(node)).inserted else { continue }
            total += node.driver.allocatedSize ?? 0
        }
        return total
    }
    /// True when every grain is written compressed (stream-optimized): writes must be whole grains, in order.
    public var needsCompressedWrites: Bool { extents.first?.compressed ?? false }
    /// The grain size of the first sparse extent (`cluster-size`), nil when the first extent is flat.
    public var grainSize: UInt64? {
        guard let first = extents.first, case .sparse = first.kind else { return nil }
        return first.grainSize
    }
    /// The current content identifier.
    public var currentCID: UInt32 { lock.withLock { cid } }

    /// The extent holding guest byte `offset`.
    func findExtent(at offset: UInt64) throws(BlockError) -> VmdkExtent {
        var low = 0
        var high = extents.count
        while low < high {
            let middle = (low + high) / 2
            if extents[middle].end <= offset { low = middle + 1 } else { high = middle }
        }
        guard low < extents.count else { throw .io("vmdk: offset \(offset) lies past the last extent") }
        return extents[low]
    }

    /// The grain state of a sparse extent's grain, looked up under the lock.
    func lookup(_ extent: VmdkExtent, grain index: UInt64) throws(BlockError) -> VmdkGrain {
        lock.lock()
        defer { lock.unlock() }
        return try extent.grain(index)
    }

    // MARK: - Reads

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        var done = 0
        while done < buffer.count {
            let position = offset + UInt64(done)
            let extent = try findExtent(at: position)
            let inExtent = position - extent.start
            var count = Int(min(UInt64(buffer.count - done), extent.end - position))
            switch extent.kind {
            case .zero:
                zero(buffer, done, count)
            case .flat(let base):
                try readFile(extent.file!, into: UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + count]), at: base + inExtent)
            case .sparse:
                let within = inExtent % extent.grainSize
                count = Int(min(UInt64(count), extent.grainSize - within))
                let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + count])
                switch try lookup(extent, grain: inExtent / extent.grainSize) {
                case .unallocated:
                    try readBacking(into: piece, at: position)
                case .zeroed:
                    zero(buffer, done, count)
                case .data(let host):
                    let file = extent.file!
                    count = contiguousRun(extent, host: host + within, at: inExtent, length: count, limit: buffer.count - done)
                    let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + count])
                    guard host + within + UInt64(count) <= file.length else {
                        throw .io("vmdk: grain at \(host) lies past the end of '\(file.driver.filename)'")
                    }
                    file.debugEvent(.readAio)
                    try file.read(into: piece, at: host + within)
                case .compressed(let host):
                    try readCompressed(extent, host: host, within: Int(within), into: piece)
                }
            }
            done += count
        }
    }

    /// How many bytes from `inExtent` (whose first `length` bytes are data at `host`) lie in grains
    /// that follow each other in the file, up to `limit`: one read serves them all.
    private func contiguousRun(_ extent: VmdkExtent, host: UInt64, at inExtent: UInt64, length: Int, limit: Int) -> Int {
        var run = length
        lock.lock()
        defer { lock.unlock() }
        while run < limit, inExtent + UInt64(run) < extent.length {
            guard let state = try? extent.grain((inExtent + UInt64(run)) / extent.grainSize), case .data(let next) = state,
                  next == host + UInt64(run) else { break }
            run += Int(min(extent.grainSize, UInt64(limit - run), extent.length - inExtent - UInt64(run)))
        }
        return run
    }

    /// Makes a flat extent's file long enough for a write that ends at `end`.
    func growFlat(_ node: BlockNode, to end: UInt64) throws(BlockError) {
        guard node.length < end else { return }
        try lock.withLock { () throws(BlockError) in if node.length < end { try node.resize(to: end) } }
    }

    /// Reads a flat extent's bytes; past the end of its file they read as zeroes, as QEMU's block layer gives them.
    private func readFile(_ node: BlockNode, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        let available = offset >= node.length ? 0 : Int(min(UInt64(buffer.count), node.length - offset))
        if available > 0 { try node.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<available]), at: offset) }
        if available < buffer.count { zero(buffer, available, buffer.count - available) }
    }

    /// Reads an unallocated range from the backing file, or zeroes without one.
    func readBacking(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        guard let backing else { return zero(buffer, 0, buffer.count) }
        guard parentMatches else { throw .invalid("vmdk: the parent image's CID does not match this image's parentCID") }
        let available = offset >= backing.length ? 0 : Int(min(UInt64(buffer.count), backing.length - offset))
        if available > 0 { try backing.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<available]), at: offset) }
        if available < buffer.count { zero(buffer, available, buffer.count - available) }
    }

    func zero(_ buffer: UnsafeMutableRawBufferPointer, _ start: Int, _ count: Int) {
        guard count > 0 else { return }
        UnsafeMutableRawBufferPointer(rebasing: buffer[start..<start + count]).initializeMemory(as: UInt8.self, repeating: 0)
    }

    // MARK: - Writes

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        guard !readOnly else { throw .notPermitted("vmdk: the image is read-only") }
        var done = 0
        while done < buffer.count {
            let position = offset + UInt64(done)
            let extent = try findExtent(at: position)
            let inExtent = position - extent.start
            var count = Int(min(UInt64(buffer.count - done), extent.end - position))
            switch extent.kind {
            case .zero:
                throw .io("vmdk: a ZERO extent cannot be written")
            case .flat(let base):
                let file = extent.file!
                try growFlat(file, to: base + inExtent + UInt64(count))
                file.debugEvent(.writeAio)
                try file.write(UnsafeRawBufferPointer(rebasing: buffer[done..<done + count]), at: base + inExtent, fua: false)
            case .sparse:
                let within = inExtent % extent.grainSize
                count = Int(min(UInt64(count), extent.grainSize - within))
                let piece = UnsafeRawBufferPointer(rebasing: buffer[done..<done + count])
                if extent.compressed {
                    try writeCompressed(extent, piece, at: position)
                } else {
                    try writeSparse(extent, piece, at: position, within: within)
                }
            }
            done += count
        }
        try updateCID()
    }

    /// Writes within one grain of a plain sparse extent, allocating the grain when it has none.
    private func writeSparse(_ extent: VmdkExtent, _ data: UnsafeRawBufferPointer, at position: UInt64, within: UInt64) throws(BlockError) {
        let file = extent.file!
        let index = (position - extent.start) / extent.grainSize
        lock.lock()
        let state: VmdkGrain
        do { state = try extent.grain(index) } catch {
            lock.unlock()
            throw error
        }
        if case .data(let host) = state {
            lock.unlock()
            file.debugEvent(.writeAio)
            try file.write(data, at: host + within, fua: false)
            return
        }
        defer { lock.unlock() }
        // A new grain: the whole grain is written (backing data or zeroes around the new bytes)
        // before the grain tables point at it.
        let grainStart = position - within
        var grain = [UInt8](repeating: 0, count: Int(extent.grainSize))
        try grain.withMutableBytes { (raw) throws(BlockError) in
            if state == .unallocated && backing != nil {
                let inGuest = Int(min(extent.grainSize, extent.end - grainStart))
                try readBacking(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<inGuest]), at: grainStart)
            }
            UnsafeMutableRawBufferPointer(rebasing: raw[Int(within)..<Int(within) + data.count]).copyMemory(from: data)
        }
        let sector = try extent.takeSectors(extent.grainSize / 512)
        file.debugEvent(.writeAio)
        try grain.withBytes { (raw) throws(BlockError) in try file.write(raw, at: sector * 512, fua: false) }
        try extent.setEntry(index, to: UInt32(sector))
    }

    /// Puts a new CID in the descriptor on the first write after opening, as QEMU does.
    func updateCID() throws(BlockError) {
        guard !cidUpdated.load(ordering: .relaxed) else { return }
        lock.lock()
        defer { lock.unlock() }
        guard !cidUpdated.load(ordering: .relaxed) else { return }
        let area = Int(min(UInt64(descriptorArea), file.length > descriptorOffset ? file.length - descriptorOffset : 0))
        var text = [UInt8](repeating: 0, count: area)
        try text.withMutableBytes { (raw) throws(BlockError) in try file.read(into: raw, at: descriptorOffset) }
        let newCID = UInt32.random(in: 0...UInt32.max)
        guard var updated = VmdkDescriptor.replacingCID(in: text, with: newCID) else {
            throw .invalid("vmdk: the descriptor has no CID line")
        }
        if descriptorOffset == 0 {
            // A descriptor file: padded with zeroes to whole sectors, as QEMU leaves it.
            updated += [UInt8](repeating: 0, count: (512 - updated.count % 512) % 512)
            if updated.count < area { updated += [UInt8](repeating: 0, count: area - updated.count) }
        } else {
            guard updated.count <= descriptorArea else { throw .invalid("vmdk: the new descriptor does not fit its area") }
            updated += [UInt8](repeating: 0, count: max(0, area - updated.count))
        }
        if file.length < descriptorOffset + UInt64(updated.count) { try file.resize(to: descriptorOffset + UInt64(updated.count)) }
        try updated.withBytes { (raw) throws(BlockError) in try file.write(raw, at: descriptorOffset, fua: false) }
        cid = newCID
        cidUpdated.store(true, ordering: .relaxed)
    }

    public func flush() throws(BlockError) {
        try file.flush()
        var seen: Set<ObjectIdentifier> = [ObjectIdentifier(file)]
        for extent in extents {
            guard let node = extent.file, seen.insert(ObjectIdentifier(node)).inserted else { continue }
            try node.flush()
        }
    }

    // MARK: - Block status

    public func blockStatus(at offset: UInt64, length count: UInt64) throws(BlockError) -> [Extent] {
        let extent = try findExtent(at: offset)
        let inExtent = offset - extent.start
        var limit = min(count, extent.end - offset)
        switch extent.kind {
        case .zero:
            return [Extent(length: limit, zero: true, hole: true, depth: 0)]
        case .flat(let base):
            let node = extent.file!
            let host = base + inExtent
            guard host < node.length else { return [Extent(length: limit, zero: true, hole: false, depth: 0, hostOffset: host)] }
            limit = min(limit, node.length - host)
            var result: [Extent] = []
            var position: UInt64 = 0
            for piece in try node.blockStatus(at: host, length: limit) where position < limit {
                let length = min(piece.length, limit - position)
                result.append(piece.zero
                    ? Extent(length: length, zero: true, hole: false, depth: 0, hostOffset: host + position)
                    : .data(length, hostOffset: host + position))
                position += length
            }
            return result
        case .sparse:
            var result: [Extent] = []
            var position = offset
            let end = offset + min(limit, extent.grainSize * 4096)
            lock.lock()
            var states: [(UInt64, VmdkGrain)] = []
            do {
                while position < end {
                    let within = (position - extent.start) % extent.grainSize
                    let length = min(extent.grainSize - within, end - position)
                    var state = try extent.grain((position - extent.start) / extent.grainSize)
                    if case .data(let host) = state { state = .data(host: host + within) }
                    states.append((length, state))
                    position += length
                }
            } catch {
                lock.unlock()
                throw error
            }
            lock.unlock()
            position = offset
            for (length, state) in states {
                switch state {
                case .data(let host): result.appendMerging(.data(length, hostOffset: host))
                case .compressed: result.appendMerging(.data(length))
                case .zeroed: result.appendMerging(Extent(length: length, zero: true, hole: true, depth: 0))
                case .unallocated:
                    for piece in try ImageBacking.status(of: backing, at: position, length: length) { result.appendMerging(piece) }
                }
                position += length
            }
            return result
        }
    }

}
