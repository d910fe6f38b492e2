#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock

/// The `vhdx` format driver: Hyper-V images, payload blocks mapped by a block allocation table,
/// with a metadata log that is replayed at open when a writer left entries in it.
///
/// Concurrency: the BAT and the end of the file are guarded by `lock`, held only to look entries up
/// or change them; allocations are serialised by `allocation`: a new block's data is written and
/// flushed before its BAT entry says it is present.
///
/// `@unchecked Sendable`: `bat` and `fileEnd` are guarded by `lock`; the rest is immutable.
public final class VhdxDriver: BlockDriver, @unchecked Sendable {
    public let driverName = "vhdx"
    public let features: DriverFeatures
    let file: BlockNode
    let parameters: VhdxParameters
    let batOffset: UInt64
    let blockSize: UInt64
    let lock = MonotonicCondition()
    let allocation = MonotonicCondition()
    /// Guarded by `lock`.
    var bat: [UInt64]

    init(file: BlockNode, parameters: VhdxParameters, batOffset: UInt64, bat: [UInt64]) {
        self.file = file
        self.parameters = parameters
        self.batOffset = batOffset
        self.blockSize = UInt64(parameters.blockSize)
        self.bat = bat
        var features = DriverFeatures()
        features.blockStatus = true
        features.fastZero = true
        features.writeThresholdOnFile = true
        self.features = features
    }

    public var length: UInt64 { parameters.virtualSize }
    public var filename: String { file.driver.filename }
    public var allocatedSize: UInt64? { file.driver.allocatedSize }

    /// Where a payload block lies.
    enum Placement {
        case zero
        case data(UInt64)
        case partial
    }

    func placement(ofBlock block: UInt64) -> Placement {
        let index = Int(parameters.batIndex(ofBlock: block))
        lock.lock()
        let entry = bat[index]
        lock.unlock()
        switch entry & 7 {
        case VhdxBlockState.fullyPresent: return .data(entry & VhdxBlockState.offsetMask)
        case VhdxBlockState.partiallyPresent: return .partial
        default: return .zero
        }
    }

    /// Calls `body` for each piece of a guest range that lies in one block.
    @inline(__always)
    func forEachBlock(_ offset: UInt64, _ count: Int, _ body: (_ block: UInt64, _ intra: UInt64, _ done: Int, _ length: Int) throws(BlockError) -> Void) throws(BlockError) {
        var done = 0
        while done < count {
            let position = offset + UInt64(done)
            let intra = position % blockSize
            let length = Int(min(UInt64(count - done), blockSize - intra))
            try body(position / blockSize, intra, done, length)
            done += length
        }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        try forEachBlock(offset, buffer.count) { (block, intra, done, length) throws(BlockError) in
            let target = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + length])
            switch placement(ofBlock: block) {
            case .zero:
                target.initializeMemory(as: UInt8.self, repeating: 0)
            case .partial:
                throw .io("vhdx: block \(block) is partially present (a differencing image's); it cannot be read")
            case .data(let host):
                guard host + intra + UInt64(length) <= file.length else {
                    throw .io("vhdx: block \(block) at \(host) lies past the end of the image file")
                }
                file.debugEvent(.readAio)
                try file.read(into: target, at: host + intra)
            }
        }
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        try forEachBlock(offset, buffer.count) { (block, intra, done, length) throws(BlockError) in
            let source = UnsafeRawBufferPointer(rebasing: buffer[done..<done + length])
            let host = try writableBlock(block)
            guard host + intra + UInt64(length) <= file.length else {
                throw .io("vhdx: block \(block) at \(host) lies past the end of the image file")
            }
            file.debugEvent(.writeAio)
            try file.write(source, at: host + intra, fua: false)
        }
    }

    /// The file offset of `block`, allocated first when it is not present: a new block at the end of
    /// the file (whole MiB), zero until written, made durable before its BAT entry is written.
    func writableBlock(_ block: UInt64) throws(BlockError) -> UInt64 {
        switch placement(ofBlock: block) {
        case .data(let host): return host
        case .partial: throw .io("vhdx: block \(block) is partially present (a differencing image's); it cannot be written")
        case .zero: break
        }
        allocation.lock()
        defer { allocation.unlock() }
        if case .data(let host) = placement(ofBlock: block) { return host }
        let host = (file.length + (1 << 20) - 1) & ~UInt64((1 << 20) - 1)
        file.debugEvent(.clusterAlloc)
        try file.resize(to: host + blockSize)
        try file.flush()
        let index = parameters.batIndex(ofBlock: block)
        let entry = host | VhdxBlockState.fullyPresent
        var bytes = [UInt8](repeating: 0, count: 8)
        VhdxBytes.put(entry, &bytes, 0)
        try bytes.withBytes { (raw) throws(BlockError) in try file.write(raw, at: batOffset + index * 8, fua: false) }
        lock.lock()
        bat[Int(index)] = entry
        lock.unlock()
        return host
    }

    public func writeZeroes(at offset: UInt64, length count: UInt64, flags: ZeroFlags) throws(BlockError) {
        // Blocks not present read as zeroes already; present ones get zero bytes written.
        var pieces: [(host: UInt64, length: Int)] = []
        var done: UInt64 = 0
        while done < count {
            let position = offset + done
            let intra = position % blockSize
            let length = min(count - done, blockSize - intra)
            switch placement(ofBlock: position / blockSize) {
            case .zero: break
            case .data(let host): pieces.append((host + intra, Int(length)))
            case .partial: throw .io("vhdx: block \(position / blockSize) is partially present; it cannot be written")
            }
            done += length
        }
        guard !pieces.isEmpty else { return }
        guard !flags.contains(.fastOnly) else { throw .notSupported("vhdx: zeroing present blocks writes their bytes") }
        let chunk = min(pieces.map(\.length).max() ?? 0, 4 << 20)
        let zeroes = AlignedBuffer(capacity: chunk)
        zeroes.bytes.initializeMemory(as: UInt8.self, repeating: 0)
        for piece in pieces {
            var written = 0
            while written < piece.length {
                let count = min(chunk, piece.length - written)
                try file.write(UnsafeRawBufferPointer(rebasing: zeroes.bytes[0..<count]), at: piece.host + UInt64(written), fua: false)
                written += count
            }
        }
    }

    public func flush() throws(BlockError) {
        try file.flush()
    }

    public func blockStatus(at offset: UInt64, length count: UInt64) throws(BlockError) -> [Extent] {
        var extents: [Extent] = []
        var done: UInt64 = 0
        let limit = min(count, blockSize * 1024)
        while done < limit {
            let position = offset + done
            let intra = position % blockSize
            let length = min(limit - done, blockSize - intra)
            switch placement(ofBlock: position / blockSize) {
            case .data(let host): extents.appendMerging(.data(length, hostOffset: host + intra))
            case .partial: extents.appendMerging(.data(length))
            case .zero: extents.appendMerging(Extent(length: length, zero: true, hole: true, depth: 0))
            }
            done += length
        }
        return extents
    }

    /// Opens `vhdx` nodes.
    public static let opener: DriverOpener = { options, context throws(OptionError) in
        guard let file = try context.child("file", of: options) else { throw options.missing("file") }
        try context.requireWritable([file], of: options)
        do throws(BlockError) {
            return OpenedDriver(driver: try open(file, readOnly: context.common.readOnly), children: [("file", file)])
        } catch {
            throw options.failure(error.message)
        }
    }

    /// Reads the image's metadata; a log with entries is replayed first (refused read-only, as QEMU
    /// refuses it), and a writable image gets new headers without a log, as QEMU writes them.
    static func open(_ file: BlockNode, readOnly: Bool) throws(BlockError) -> VhdxDriver {
        let layout = try VhdxImage.readHeaders(file)
        var headers = layout.headers
        var current = layout.current
        let pending = try VhdxImage.pendingLog(file, header: headers[current]!)
        if !pending.isEmpty {
            guard !readOnly else {
                let name = file.driver.filename
                throw .notPermitted("VHDX image file '\(name)' opened read-only, but contains a log that needs to be replayed\n"
                    + "To replay the log, run:\nqemu-img check -r all '\(name)'")
            }
            try VhdxLog.replay(pending, on: file)
            Log.info("vhdx '\(file.driver.filename)': replayed \(pending.count) log entries")
        }
        let parameters = try VhdxImage.readParameters(file, region: layout.metadata)
        let bat = try VhdxImage.readBAT(file, region: layout.bat, parameters: parameters)
        if let problem = VhdxImage.batProblems(bat, parameters: parameters, fileLength: file.length).first {
            throw .invalid(problem)
        }
        if !readOnly {
            let session = VhdxGUID.random()
            try VhdxImage.updateHeader(file, headers: &headers, current: &current, session: session, newDataGUID: false)
            try VhdxImage.updateHeader(file, headers: &headers, current: &current, session: session, newDataGUID: false)
        }
        return VhdxDriver(file: file, parameters: parameters, batOffset: layout.bat.offset, bat: bat)
    }
}
