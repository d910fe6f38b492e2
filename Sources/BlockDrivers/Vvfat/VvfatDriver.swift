#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock

/// The `vvfat` driver: a host directory presented read-only as a FAT12/16/32 disk, laid out as
/// QEMU's vvfat driver lays it out (file contents are read from the host at request time; names,
/// sizes and the cluster map are fixed at open). QEMU's experimental write-back (`rw`) is refused.
final class VvfatDriver: BlockDriver {
    let driverName = "vvfat"
    let features: DriverFeatures
    let length: UInt64
    let filename: String
    private let layout: VvfatLayout

    init(layout: VvfatLayout, filename: String) {
        self.layout = layout
        self.filename = filename
        self.length = UInt64(layout.totalSectors) * 512
        var features = DriverFeatures()
        features.needsFlush = false
        features.alignment = 512
        self.features = features
    }

    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        throw .notPermitted("vvfat disks are read-only")
    }

    func flush() throws(BlockError) {}

    /// The mapping holding `cluster`, or nil for a free cluster.
    private func mapping(holding cluster: UInt32) -> VvfatMapping? {
        var low = 0
        var high = layout.mappings.count
        while low < high {
            let middle = (low + high) / 2
            if layout.mappings[middle].end <= cluster { low = middle + 1 } else { high = middle }
        }
        guard low < layout.mappings.count, layout.mappings[low].begin <= cluster else { return nil }
        return layout.mappings[low]
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        var done = 0
        while done < buffer.count {
            let sector = UInt32((offset + UInt64(done)) / 512)
            guard sector < layout.totalSectors else { throw .io("vvfat: sector \(sector) lies past the end of the disk") }
            let rest = buffer.count - done
            let piece: UnsafeMutableRawBufferPointer
            if sector < layout.offsetToRootDirectory {
                piece = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + 512])
                let source: [UInt8]
                let at: Int
                if sector < layout.offsetToFat {
                    (source, at) = (layout.firstSectors, Int(sector) * 512)
                } else if sector < layout.offsetToFat + layout.sectorsPerFat {
                    (source, at) = (layout.fat, Int(sector - layout.offsetToFat) * 512)
                } else {
                    (source, at) = (layout.fat, Int(sector - layout.offsetToFat - layout.sectorsPerFat) * 512)
                }
                if at + 512 <= source.count {
                    source.withUnsafeBytes { piece.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[at..<at + 512])) }
                } else {
                    piece.initializeMemory(as: UInt8.self, repeating: 0)
                }
            } else {
                let relative = sector - layout.offsetToRootDirectory
                let cluster = relative / VvfatLayout.sectorsPerCluster
                let inCluster = Int(relative % VvfatLayout.sectorsPerCluster) * 512
                let count = min(VvfatLayout.clusterSize - inCluster, rest)
                piece = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + count])
                try readCluster(cluster, at: inCluster, into: piece)
            }
            done += piece.count
        }
    }

    /// Fills `piece` with the bytes of `cluster` from `offset` within it.
    private func readCluster(_ cluster: UInt32, at offset: Int, into piece: UnsafeMutableRawBufferPointer) throws(BlockError) {
        guard cluster <= layout.clusterCount, let mapping = mapping(holding: cluster) else {
            piece.initializeMemory(as: UInt8.self, repeating: 0)
            return
        }
        let position = Int(cluster - mapping.begin) * VvfatLayout.clusterSize + offset
        if mapping.isDirectory {
            let start = mapping.firstEntry * 32 + position
            let available = max(0, min(piece.count, layout.directory.count - start))
            layout.directory.withUnsafeBytes { source in
                UnsafeMutableRawBufferPointer(rebasing: piece[0..<available])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: source[start..<start + available]))
            }
            UnsafeMutableRawBufferPointer(rebasing: piece[available...]).initializeMemory(as: UInt8.self, repeating: 0)
            return
        }
        // A file: its bytes now; past its end (or when it cannot be read) zeroes, as QEMU gives none.
        var got = 0
        let descriptor = open(mapping.path, O_RDONLY | O_CLOEXEC)
        if descriptor >= 0 {
            defer { Glibc.close(descriptor) }
            while got < piece.count {
                let count = pread(descriptor, piece.baseAddress! + got, piece.count - got, off_t(position + got))
                if count < 0 && errno == EINTR { continue }
                if count <= 0 { break }
                got += count
            }
        }
        UnsafeMutableRawBufferPointer(rebasing: piece[got...]).initializeMemory(as: UInt8.self, repeating: 0)
    }

    /// Opens `vvfat` nodes.
    static let opener: DriverOpener = { options, context throws(OptionError) in
        guard let directory = try options.string("dir") else { throw options.missing("dir") }
        let fatType = try options.integer("fat-type") ?? 0
        let floppy = try options.bool("floppy") ?? false
        let rw = try options.bool("rw") ?? false
        var label = [UInt8](repeating: 0x20, count: 11)
        if let given = try options.string("label") {
            let bytes = Array(given.utf8)
            guard bytes.count <= 11 else { throw options.failure("vvfat label cannot be longer than 11 bytes") }
            label.replaceSubrange(0..<bytes.count, with: bytes)
        } else {
            label.replaceSubrange(0..<10, with: Array("QEMU VVFAT".utf8))
        }
        guard [0, 12, 16, 32].contains(fatType) else { throw options.failure("Valid FAT types are only 12, 16 and 32") }
        if rw {
            throw options.failure("vvfat's write-back mode (rw=on) is not supported: blockd presents the directory read-only")
        }
        guard context.common.readOnly else { throw options.failure("Image is read-only") }
        let layout: VvfatLayout
        do throws(BlockError) {
            layout = try VvfatLayout(path: directory, fatType: Int(fatType), floppy: floppy, label: label)
        } catch {
            throw options.failure(error.message)
        }
        if layout.fatType == 32 { Log.warning("FAT32 has not been tested. You are welcome to do so!") }
        let name = "fat:\(layout.fatType)\(floppy ? ":floppy" : ""):\(directory)"
        return OpenedDriver(driver: VvfatDriver(layout: layout, filename: name))
    }
}
