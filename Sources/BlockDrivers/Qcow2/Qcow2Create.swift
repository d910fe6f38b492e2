import BlockCore

/// How much of a new qcow2 image is allocated up front (`preallocation=`).
public enum Qcow2Preallocation: String, Sendable, CaseIterable {
    /// Only the header, L1 and refcount structures.
    case off
    /// Every L2 table and data cluster mapped; the file is sparse.
    case metadata
    /// As `metadata`, with the file's blocks reserved by `posix_fallocate`.
    case falloc
    /// As `metadata`, with every data cluster written with zeroes.
    case full
}

/// The settings of a new qcow2 image (the `-o` options of `create`).
public struct Qcow2CreateOptions: Sendable, Equatable {
    /// Virtual size in bytes.
    public var size: UInt64
    /// Bytes per cluster: a power of two from 512 to 2 MiB.
    public var clusterSize: Int = 65536
    /// Header version: 2 (`compat=0.10`) or 3 (`compat=1.1`).
    public var version: UInt32 = 3
    /// Bits per refcount: a power of two from 1 to 64 (16 only for version 2).
    public var refcountBits: Int = 16
    /// `lazy_refcounts` (version 3 only).
    public var lazyRefcounts = false
    /// What to allocate up front.
    public var preallocation: Qcow2Preallocation = .off
    /// The backing file name as stored in the header.
    public var backingFile: String?
    /// The backing file's format, as stored in its header extension.
    public var backingFormat: String?

    /// Settings with qemu-img's defaults for an image of `size` bytes.
    public init(size: UInt64) { self.size = size }

    /// Checks the combination; the message names the offending option.
    public func validate() throws(BlockError) {
        guard clusterSize >= 512, clusterSize <= 2 << 20, clusterSize & (clusterSize - 1) == 0 else {
            throw .invalid("Cluster size must be a power of two between 512 and 2048k")
        }
        guard version == 2 || version == 3 else { throw .invalid("Invalid compatibility level") }
        guard refcountBits >= 1, refcountBits <= 64, refcountBits & (refcountBits - 1) == 0 else {
            throw .invalid("Refcount width must be a power of two and may not exceed 64 bits")
        }
        if version == 2 {
            guard refcountBits == 16 else { throw .invalid("Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)") }
            guard !lazyRefcounts else { throw .invalid("Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)") }
        }
        guard backingFile == nil || preallocation == .off else {
            throw .invalid("Backing file and preallocation can only be used at the same time if extended_l2 is on")
        }
        guard size <= 1 << 56 else { throw .invalid("Image size is too large for this cluster size") }
        guard (backingFile?.utf8.count ?? 0) <= 1023 else { throw .invalid("Backing file name is too long") }
    }
}

/// Lays out a new, empty qcow2 image: header, refcount table and blocks, L1 and, when preallocated,
/// L2 tables and data clusters, every used cluster with refcount 1.
public enum Qcow2Create {
    /// One region of the new file.
    public struct Region: Sendable, Equatable {
        /// Byte offset in the file.
        public var offset: UInt64
        /// The bytes to write there.
        public var bytes: [UInt8]
    }

    /// The plan for a new image: what to write where, the file's final length and the data clusters.
    public struct Layout: Sendable {
        /// Metadata to write.
        public var regions: [Region]
        /// The file's length in bytes.
        public var fileLength: UInt64
        /// Offset and length of the preallocated data area (empty with `preallocation=off`).
        public var dataRanges: [Range<UInt64>]
    }

    /// Computes the layout of a new image.
    public static func layout(_ options: Qcow2CreateOptions) throws(BlockError) -> Layout {
        try options.validate()
        let cluster = UInt64(options.clusterSize)
        let clusterBits = UInt32(options.clusterSize.trailingZeroBitCount)
        let l2Entries = cluster / 8
        let dataClusters = (options.size + cluster - 1) / cluster
        let l1Size = (dataClusters + l2Entries - 1) / l2Entries
        let l1Clusters = (l1Size * 8 + cluster - 1) / cluster
        let preallocated = options.preallocation != .off
        let l2Tables = preallocated ? l1Size : 0
        let payload = 1 + l1Clusters + l2Tables + (preallocated ? dataClusters : 0)
        // Refcount blocks and table must also count themselves: iterate to a fixed point.
        let perBlock = cluster * 8 / UInt64(options.refcountBits)
        var blocks: UInt64 = 0
        var tableClusters: UInt64 = 0
        while true {
            let total = payload + blocks + tableClusters
            let newBlocks = (total + perBlock - 1) / perBlock
            let newTable = max(1, (newBlocks * 8 + cluster - 1) / cluster)
            if newBlocks == blocks && newTable == tableClusters { break }
            blocks = newBlocks
            tableClusters = newTable
        }
        guard tableClusters << UInt64(clusterBits) <= 8 << 20 else { throw .invalid("Image size is too large for this cluster size") }
        let tableOffset = cluster
        let blocksOffset = tableOffset + tableClusters * cluster
        let l1Offset = blocksOffset + blocks * cluster
        var next = l1Offset + l1Clusters * cluster

        var header = Qcow2Header()
        header.version = options.version
        header.headerLength = options.version == 3 ? 112 : 72
        header.clusterBits = clusterBits
        header.size = options.size
        header.l1Size = UInt32(l1Size)
        header.l1TableOffset = l1Offset
        header.refcountTableOffset = tableOffset
        header.refcountTableClusters = UInt32(tableClusters)
        header.refcountOrder = UInt32(options.refcountBits.trailingZeroBitCount)
        header.compatibleFeatures = options.lazyRefcounts ? Qcow2Header.lazyRefcountsBit : 0
        header.backingFile = options.backingFile
        header.backingFormat = options.backingFile == nil ? nil : options.backingFormat
        let headerBytes = header.serialized()
        guard headerBytes.count <= options.clusterSize else { throw .invalid("the header does not fit in one cluster") }

        var regions = [Region(offset: 0, bytes: headerBytes)]
        let table = (0..<blocks).map { blocksOffset + $0 * cluster }
        regions.append(Region(offset: tableOffset, bytes: Qcow2Bytes.bytes(table)))

        let copied: UInt64 = 1 << 63
        var l1 = [UInt64](repeating: 0, count: Int(l1Size))
        var dataRanges: [Range<UInt64>] = []
        if preallocated {
            for index in 0..<Int(l1Size) {
                let l2Offset = next
                next += cluster
                l1[index] = l2Offset | copied
                let first = UInt64(index) * l2Entries
                let count = min(l2Entries, dataClusters - first)
                let l2 = (0..<count).map { (next + $0 * cluster) | copied }
                regions.append(Region(offset: l2Offset, bytes: Qcow2Bytes.bytes(l2)))
                dataRanges.append(next..<next + count * cluster)
                next += count * cluster
            }
        }
        if l1Size > 0 { regions.append(Region(offset: l1Offset, bytes: Qcow2Bytes.bytes(l1))) }
        let used = next / cluster
        regions.append(Region(offset: blocksOffset, bytes: refcountBlocks(used: used, blocks: blocks, cluster: cluster, bits: options.refcountBits)))
        return Layout(regions: regions, fileLength: next, dataRanges: dataRanges)
    }

    /// Refcount blocks giving clusters `0..<used` a refcount of 1.
    private static func refcountBlocks(used: UInt64, blocks: UInt64, cluster: UInt64, bits: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(blocks * cluster))
        for index in 0..<Int(used) {
            if bits < 8 {
                // Sub-byte entries are packed from the least significant bit of each byte.
                let perByte = 8 / bits
                out[index / perByte] |= UInt8(1) << UInt8((index % perByte) * bits)
            } else {
                // Wider entries are big-endian; the value 1 is the last byte.
                out[(index + 1) * (bits / 8) - 1] = 1
            }
        }
        return out
    }

    /// Writes a new image into an empty, writable file node.
    public static func format(_ file: BlockNode, options: Qcow2CreateOptions) throws(BlockError) {
        let plan = try layout(options)
        try file.resize(to: plan.fileLength)
        for region in plan.regions where !region.bytes.isEmpty {
            try region.bytes.withBytes { (raw) throws(BlockError) in try file.write(raw, at: region.offset, fua: false) }
        }
        if options.preallocation == .full {
            for range in plan.dataRanges { try writeZeroBytes(file, range) }
        }
        try file.flush()
    }

    /// Writes real zero bytes over a range, so that the file's blocks are allocated.
    public static func writeZeroBytes(_ file: BlockNode, _ range: Range<UInt64>) throws(BlockError) {
        let zeroes = [UInt8](repeating: 0, count: 1 << 20)
        var position = range.lowerBound
        while position < range.upperBound {
            let count = Int(min(UInt64(zeroes.count), range.upperBound - position))
            try zeroes.withBytes { (raw) throws(BlockError) in
                try file.write(UnsafeRawBufferPointer(rebasing: raw[0..<count]), at: position, fua: false)
            }
            position += UInt64(count)
        }
    }
}
