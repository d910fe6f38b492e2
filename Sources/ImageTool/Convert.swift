#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import BlockDrivers
import Dispatch
import Synchronization

/// `blockimg convert`: copies an image's contents into a new (or, with `-n`, existing) image of any format.
public struct ConvertCommand: Sendable {
    /// The source image.
    public var source: String
    /// The target image.
    public var target: String
    /// `-f`: the source's format.
    public var sourceFormat: String?
    /// `-O`: the target's format.
    public var targetFormat: String
    /// Every `-o` argument, for the target.
    public var options: [String]
    /// `-S`: zero runs at least this long are left unwritten (0: write everything).
    public var sparseSize: UInt64
    /// `-n`: the target exists already; do not create it.
    public var noCreate: Bool
    /// `-W`: copy chunks in parallel, writing out of order.
    public var outOfOrder: Bool
    /// `-m`: how many chunks are copied at once with `-W`.
    public var workers: Int
    /// `-c`: write the target's clusters compressed (qcow2 only).
    public var compress: Bool

    /// Describes a convert request.
    public init(
        source: String, target: String, sourceFormat: String?, targetFormat: String, options: [String],
        sparseSize: UInt64 = 4096, noCreate: Bool = false, outOfOrder: Bool = false, workers: Int = 8, compress: Bool = false
    ) {
        self.source = source
        self.target = target
        self.sourceFormat = sourceFormat
        self.targetFormat = targetFormat
        self.options = options
        self.sparseSize = sparseSize
        self.noCreate = noCreate
        self.outOfOrder = outOfOrder
        self.workers = workers
        self.compress = compress
    }

    static let chunk: UInt64 = 2 << 20

    /// Copies; `progress` is called with the percentage done after each chunk.
    public func run(progress: (@Sendable (Double) -> Void)? = nil) throws(ImageToolError) {
        try ImageFiles.checkFormat(targetFormat)
        guard (1...16).contains(workers) else { throw ImageToolError("Invalid number of coroutines. Allowed number of coroutines is between 1 and 16") }
        guard sparseSize == 0 || sparseSize % 512 == 0 else {
            throw ImageToolError("Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to 2 MiB")
        }
        if compress && targetFormat != "qcow2" {
            throw ImageToolError("Compression not supported for format '\(targetFormat)' (only qcow2)")
        }
        let input = try ImageFiles.open(source, format: sourceFormat, readOnly: true)
        defer { input.close() }
        let size = input.node.length
        if !noCreate {
            _ = try CreateOptions(options, format: targetFormat)
            _ = try CreateCommand(
                path: target, format: targetFormat, size: String(size), options: options, backingFile: nil,
                backingFormat: nil, unsafe: false
            ).run()
        }
        let output = try ImageFiles.open(target, format: targetFormat, readOnly: false)
        defer { output.close() }
        if noCreate && output.node.length < size {
            throw ImageToolError("Target image '\(target)' is smaller than the source (\(output.node.length) < \(size) bytes)")
        }
        let compressor = compress ? output.node.driver as? Qcow2Driver : nil
        var configured = ChunkCopier(
            from: input.node, to: output.node, size: size, sparseSize: sparseSize, targetIsZero: !noCreate && !RemoteURI.isRemote(target), compressor: compressor)
        if let vmdk = output.node.driver as? VmdkDriver, vmdk.needsCompressedWrites { configured.grainSize = vmdk.grainSize }
        let copier = configured
        let chunks = Int((size + Self.chunk - 1) / Self.chunk)
        let done = Atomic<Int>(0)
        let failure = Mutex<ImageToolError?>(nil)
        let next = Atomic<Int>(0)
        let work: @Sendable () -> Void = {
            while failure.withLock({ $0 == nil }) {
                let index = next.wrappingAdd(1, ordering: .relaxed).oldValue
                guard index < chunks else { return }
                do throws(ImageToolError) {
                    try copier.copy(chunk: UInt64(index) * Self.chunk, length: Self.chunk)
                } catch {
                    failure.withLock { if $0 == nil { $0 = error } }
                    return
                }
                let finished = done.wrappingAdd(1, ordering: .relaxed).newValue
                progress?(Double(finished) * 100 / Double(max(chunks, 1)))
            }
        }
        if outOfOrder && workers > 1 {
            DispatchQueue.concurrentPerform(iterations: workers) { _ in work() }
        } else {
            work()
        }
        if let error = failure.withLock({ $0 }) { throw error }
        do { try output.node.flush() } catch { throw ImageToolError(error, target) }
        if chunks == 0 { progress?(100) }
    }
}

/// Copies one chunk of a source node to a target node, skipping what reads as zeroes where it can.
struct ChunkCopier: Sendable {
    let from: BlockNode
    let to: BlockNode
    let size: UInt64
    let sparseSize: UInt64
    /// True when the target reads as zeroes everywhere before the copy.
    let targetIsZero: Bool
    /// With `-c`: the qcow2 target, written one compressed cluster at a time.
    let compressor: Qcow2Driver?
    /// A target that takes only whole grains (a streamOptimized vmdk): the grain size.
    var grainSize: UInt64?

    func copy(chunk start: UInt64, length: UInt64) throws(ImageToolError) {
        if let compressor { return try copyCompressed(compressor, chunk: start, length: length) }
        if let grainSize { return try copyGrains(grainSize, chunk: start, length: length) }
        let end = min(size, start + length)
        var position = start
        var buffer = [UInt8](repeating: 0, count: Int(end - start))
        while position < end {
            let extents: [Extent]
            do { extents = try from.blockStatus(at: position, length: end - position) } catch { throw ImageToolError(error, from.driver.filename) }
            guard let first = extents.first, first.length > 0 else { break }
            let count = min(first.length, end - position)
            if first.zero {
                if !targetIsZero { try zero(at: position, count: count) }
            } else {
                try copyData(at: position, count: count, buffer: &buffer)
            }
            position += count
        }
    }

    /// Copies whole clusters, each compressed; clusters that read as zeroes are left out.
    private func copyCompressed(_ target: Qcow2Driver, chunk start: UInt64, length: UInt64) throws(ImageToolError) {
        let cluster = UInt64(target.header.clusterSize)
        let end = min(size, start + length)
        var buffer = [UInt8](repeating: 0, count: Int(cluster))
        var position = start
        do {
            while position < end {
                let inSource = Int(min(cluster, size - position))
                let inTarget = Int(min(cluster, to.length - position))
                try buffer.withMutableBytes { (raw) throws(BlockError) in
                    if inSource < raw.count { UnsafeMutableRawBufferPointer(rebasing: raw[inSource...]).initializeMemory(as: UInt8.self, repeating: 0) }
                    try from.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<inSource]), at: position)
                    if Self.allZero(raw, 0, inTarget) {
                        if !targetIsZero { try Self.writeZeroes(to, at: position, count: UInt64(inTarget)) }
                    } else {
                        try target.writeCompressed(UnsafeRawBufferPointer(rebasing: raw[0..<inTarget]), at: position)
                    }
                }
                position += cluster
            }
        } catch {
            throw ImageToolError(error, "compressing at offset \(position)")
        }
    }

    /// Copies whole grains in order, each written once; grains that read as zeroes are left out.
    private func copyGrains(_ grain: UInt64, chunk start: UInt64, length: UInt64) throws(ImageToolError) {
        let end = min(size, start + length)
        var buffer = [UInt8](repeating: 0, count: Int(grain))
        var position = start
        do {
            while position < end {
                // The target's last grain may reach past the source's end (sizes round up to sectors).
                let count = Int(min(grain, to.length - position))
                let inSource = min(count, Int(size - position))
                try buffer.withMutableBytes { (raw) throws(BlockError) in
                    let data = UnsafeMutableRawBufferPointer(rebasing: raw[0..<count])
                    data.initializeMemory(as: UInt8.self, repeating: 0)
                    try from.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<inSource]), at: position)
                    if Self.allZero(data, 0, count) {
                        if !targetIsZero { try Self.writeZeroes(to, at: position, count: UInt64(count)) }
                    } else {
                        try to.write(UnsafeRawBufferPointer(data), at: position, fua: false)
                    }
                }
                position += grain
            }
        } catch {
            throw ImageToolError(error, "copying at offset \(position)")
        }
    }

    private func copyData(at offset: UInt64, count: UInt64, buffer: inout [UInt8]) throws(ImageToolError) {
        do {
            try buffer.withMutableBytes { (raw) throws(BlockError) in
                let data = UnsafeMutableRawBufferPointer(rebasing: raw[0..<Int(count)])
                try from.read(into: data, at: offset)
                guard sparseSize > 0 else {
                    try to.write(UnsafeRawBufferPointer(data), at: offset, fua: false)
                    return
                }
                // Write runs of granules that hold data; leave (or zero) runs that are all zeroes.
                let granule = Int(sparseSize)
                var index = 0
                while index < data.count {
                    let isZero = Self.allZero(data, index, min(granule, data.count - index))
                    var runEnd = index
                    while runEnd < data.count, Self.allZero(data, runEnd, min(granule, data.count - runEnd)) == isZero {
                        runEnd += granule
                    }
                    runEnd = min(runEnd, data.count)
                    let at = offset + UInt64(index)
                    if !isZero {
                        try to.write(UnsafeRawBufferPointer(rebasing: data[index..<runEnd]), at: at, fua: false)
                    } else if !targetIsZero {
                        try ChunkCopier.writeZeroes(to, at: at, count: UInt64(runEnd - index))
                    }
                    index = runEnd
                }
            }
        } catch {
            throw ImageToolError(error, "copying at offset \(offset)")
        }
    }

    private func zero(at offset: UInt64, count: UInt64) throws(ImageToolError) {
        do { try Self.writeZeroes(to, at: offset, count: count) } catch { throw ImageToolError(error, to.driver.filename) }
    }

    /// Zeroes a range, writing zero bytes where the node has no zero-write of its own.
    static func writeZeroes(_ node: BlockNode, at offset: UInt64, count: UInt64) throws(BlockError) {
        do {
            try node.writeZeroes(at: offset, length: count, flags: [.mayUnmap])
        } catch where error.errno == ENOTSUP {
            try Qcow2Create.writeZeroBytes(node, offset..<offset + count)
        }
    }

    private static func allZero(_ data: UnsafeMutableRawBufferPointer, _ start: Int, _ count: Int) -> Bool {
        var index = start
        let end = start + count
        while index < end {
            if data[index] != 0 { return false }
            index += 1
        }
        return true
    }
}
