#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock

/// The `bochs` format driver: Bochs growing images, read-only. The catalog maps each extent of
/// the disk to a block of the file holding a bitmap of present sectors and then the sectors.
final class BochsDriver: ReadOnlyImageDriver {
    let driverName = "bochs"
    let features: DriverFeatures
    let length: UInt64
    private let file: BlockNode
    private let header: BochsHeader
    private let catalog: [UInt32]

    init(file: BlockNode, header: BochsHeader, catalog: [UInt32]) {
        self.file = file
        self.header = header
        self.catalog = catalog
        self.length = header.diskSize / 512 * 512
        var features = DriverFeatures()
        features.needsFlush = false
        features.blockStatus = true
        self.features = features
    }

    var filename: String { file.driver.filename }
    var allocatedSize: UInt64? { file.driver.allocatedSize }

    /// The runs of `[offset, offset + length)` within one extent: each run's length and its host
    /// offset, nil where it reads as zeroes; stops at the end of the extent.
    private func runs(at offset: UInt64, length: UInt64) throws(BlockError) -> [(length: UInt64, host: UInt64?)] {
        let extentSize = UInt64(header.extentSize)
        let extentIndex = Int(offset / extentSize)
        let inExtent = offset % extentSize
        let span = min(length, extentSize - inExtent)
        guard extentIndex < catalog.count else { throw .io("bochs: offset \(offset) lies past the catalog") }
        let entry = catalog[extentIndex]
        if entry == 0xffff_ffff { return [(span, nil)] }
        let bitmapOffset = header.dataOffset + 512 * (header.bitmapSectors + header.extentSectors) * UInt64(entry)
        let dataOffset = bitmapOffset + 512 * header.bitmapSectors
        let firstSector = inExtent / 512
        let lastSector = (inExtent + span - 1) / 512
        let bitmap = try ReadOnlyImage.bytes(file, at: bitmapOffset + firstSector / 8, count: Int(lastSector / 8 - firstSector / 8 + 1))
        func present(_ sector: UInt64) -> Bool {
            bitmap[Int(sector / 8 - firstSector / 8)] >> (sector % 8) & 1 == 1
        }
        var result: [(length: UInt64, host: UInt64?)] = []
        var position = inExtent
        let end = inExtent + span
        while position < end {
            let sector = position / 512
            let here = present(sector)
            var next = (sector + 1) * 512
            while next < end && present(next / 512) == here { next += 512 }
            next = min(next, end)
            result.append((next - position, here ? dataOffset + position : nil))
            position = next
        }
        return result
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        var done = 0
        while done < buffer.count {
            for run in try runs(at: offset + UInt64(done), length: UInt64(buffer.count - done)) {
                let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + Int(run.length)])
                if let host = run.host {
                    guard host <= file.length, run.length <= file.length - host else {
                        throw .io("bochs: data at \(host) lies past the end of the image file")
                    }
                    try file.read(into: piece, at: host)
                } else {
                    piece.initializeMemory(as: UInt8.self, repeating: 0)
                }
                done += Int(run.length)
            }
        }
    }

    func blockStatus(at offset: UInt64, length: UInt64) throws(BlockError) -> [Extent] {
        var extents: [Extent] = []
        var position = offset
        let end = offset + length
        while position < end && extents.count < 1024 {
            for run in try runs(at: position, length: end - position) {
                if let host = run.host {
                    extents.appendMerging(.data(run.length, hostOffset: host))
                } else {
                    extents.appendMerging(Extent(length: run.length, zero: true, hole: false))
                }
                position += run.length
            }
        }
        return extents
    }

    /// Opens `bochs` nodes.
    static let opener: DriverOpener = { options, context throws(OptionError) in
        try ReadOnlyImage.requireReadOnly(context, options)
        guard let file = try context.child("file", of: options) else { throw options.missing("file") }
        do throws(BlockError) {
            let header = try BochsHeader.parse(try ReadOnlyImage.bytes(file, at: 0, count: Int(min(file.length, 512))))
            let table = try ReadOnlyImage.bytes(file, at: UInt64(header.headerSize), count: Int(header.catalogEntries) * 4)
            let catalog = (0..<Int(header.catalogEntries)).map { ReadOnlyImage.le32(table, $0 * 4) }
            return OpenedDriver(driver: BochsDriver(file: file, header: header, catalog: catalog), children: [("file", file)])
        } catch {
            throw options.failure(error.message)
        }
    }

    /// Scores a file's first bytes as QEMU's bochs probe does.
    static func probe(_ header: [UInt8], _ filename: String) -> Int {
        BochsHeader.matches(header) ? 100 : 0
    }
}
