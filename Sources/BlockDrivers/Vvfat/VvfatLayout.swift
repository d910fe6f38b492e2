#if canImport(Glibc)
import Glibc
#endif
import BlockCore

/// A run of clusters of a vvfat disk: a directory (its entries in `VvfatLayout.directory`) or a
/// host file (read at request time).
struct VvfatMapping: Sendable {
    /// First cluster and one past the last.
    var begin: UInt32
    var end: UInt32
    /// Index of the mapping's own entry in the directory table.
    var entryIndex: Int
    /// For a directory: index of its first entry in the directory table; for a file: -1.
    var firstEntry: Int
    /// The mapping of the directory that holds this one (-1 for the root).
    var parent: Int
    /// The host path.
    var path: String
    var isDirectory: Bool
    /// For a file: its size in bytes when the disk was laid out.
    var size: UInt64
    /// The host device and inode, to find a directory that contains itself through a symbolic link.
    var identity: (device: UInt64, inode: UInt64) = (0, 0)
}

/// The disk QEMU's vvfat driver presents for a host directory, laid out as QEMU lays it out: MBR
/// (unless a floppy), boot sector, two FAT copies, then clusters of 16 sectors numbered from the
/// root directory; directories and files take clusters in the order they are found.
struct VvfatLayout: Sendable {
    static let sectorsPerCluster: UInt32 = 16
    static let clusterSize = Int(sectorsPerCluster) * 512

    var fatType: Int
    var offsetToBootsector: UInt32
    var totalSectors: UInt32
    var sectorCount: UInt32
    var sectorsPerFat: UInt32
    var offsetToFat: UInt32 { offsetToBootsector + 1 }
    var offsetToRootDirectory: UInt32 { offsetToFat + sectorsPerFat * 2 }
    var clusterCount: UInt32 = 0
    var rootEntries = Int(0x20 * sectorsPerCluster)
    var maxFatValue: UInt32
    /// The sectors before the first FAT (MBR, boot sector).
    var firstSectors: [UInt8]
    /// One FAT copy.
    var fat: [UInt8]
    /// Every directory's entries, 32 bytes each.
    var directory: [UInt8] = []
    /// The mappings, by first cluster.
    var mappings: [VvfatMapping] = []

    private var entryCount: Int { directory.count / 32 }

    /// Lays out `path` as a FAT disk of `fatType` (12, 16 or 32; 0 for the default), a floppy or a
    /// hard disk with an MBR, with the volume label `label` (11 bytes, space-padded).
    init(path: String, fatType requested: Int, floppy: Bool, label: [UInt8]) throws(BlockError) {
        var fatType = requested
        let cylinders: UInt32
        let heads: UInt32
        let sectors: UInt32
        if floppy {
            if fatType == 0 {
                fatType = 12
                sectors = 36
            } else {
                sectors = fatType == 12 ? 18 : 36
            }
            cylinders = 80
            heads = 2
            offsetToBootsector = 0
        } else {
            if fatType == 0 { fatType = 16 }
            offsetToBootsector = 0x3f
            cylinders = fatType == 12 ? 64 : 1024
            heads = 16
            sectors = 63
        }
        guard [12, 16, 32].contains(fatType) else { throw .invalid("Valid FAT types are only 12, 16 and 32") }
        self.fatType = fatType
        totalSectors = cylinders * heads * sectors
        sectorCount = totalSectors - offsetToBootsector
        let perFat = 1 + VvfatLayout.sectorsPerCluster * 512 * 8 / UInt32(fatType)
        sectorsPerFat = (sectorCount + perFat) / perFat
        maxFatValue = fatType == 12 ? 0xfff : fatType == 16 ? 0xffff : 0x0fff_ffff
        firstSectors = [UInt8](repeating: 0, count: Int(offsetToBootsector + 1) * 512)
        // Room for every FAT12 entry QEMU might set; only the first `sectorsPerFat` sectors show.
        fat = [UInt8](repeating: 0, count: Int(sectorsPerFat) * 512 * 2)
        var labelEntry = [UInt8](repeating: 0, count: 32)
        labelEntry.replaceSubrange(0..<11, with: label)
        labelEntry[11] = 0x28
        directory = labelEntry
        let dataSectors = Int64(sectorCount) - Int64(offsetToRootDirectory)
        clusterCount = UInt32(max(dataSectors, 0) / Int64(VvfatLayout.sectorsPerCluster))
        var root = path
        if root.count > 1 && root.hasSuffix("/") { root.removeLast() }
        mappings = [VvfatMapping(begin: 0, end: 0, entryIndex: 0, firstEntry: 0, parent: -1, path: root, isDirectory: true, size: 0)]
        var cluster: UInt32 = 0
        var index = 0
        while index < mappings.count {
            var fixFat = index != 0
            mappings[index].begin = cluster
            if mappings[index].isDirectory {
                try readDirectory(index)
            } else if mappings[index].size > 0 {
                let clusters = UInt32(1 + (mappings[index].size - 1) / UInt64(VvfatLayout.clusterSize))
                mappings[index].end = cluster + clusters
                setBegin(of: mappings[index].entryIndex, cluster)
            } else {
                mappings[index].end = cluster + 1
                fixFat = false
            }
            cluster = mappings[index].end
            guard cluster <= clusterCount else {
                let capacity = Double(sectorCount) / 2000
                throw .invalid("Directory does not fit in FAT\(fatType) (capacity \(Self.twoDecimals(capacity)) MB)")
            }
            if fixFat {
                for link in mappings[index].begin..<(mappings[index].end - 1) { setFat(link, link + 1) }
                setFat(mappings[index].end - 1, maxFatValue)
            }
            index += 1
        }
        setFat(0, maxFatValue)
        setFat(1, maxFatValue)
        let media: UInt8 = offsetToBootsector > 0 ? 0xf8 : 0xf0
        fat[0] = media
        fat.removeLast(fat.count - Int(sectorsPerFat) * 512)
        writeBootSector(media: media, heads: heads, sectors: sectors, label: label)
        if offsetToBootsector > 0 { writeMBR(cylinders: cylinders, heads: heads, sectors: sectors) }
    }

    private static func twoDecimals(_ value: Double) -> String {
        let hundredths = Int((value * 100).rounded())
        let fraction = hundredths % 100
        return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)"
    }

    private mutating func setFat(_ cluster: UInt32, _ value: UInt32) {
        switch fatType {
        case 32:
            put32(&fat, Int(cluster) * 4, value)
        case 16:
            put16(&fat, Int(cluster) * 2, UInt16(value & 0xffff))
        default:
            let offset = Int(cluster) * 3 / 2
            if cluster & 1 == 0 {
                fat[offset] = UInt8(value & 0xff)
                fat[offset + 1] = fat[offset + 1] & 0xf0 | UInt8(value >> 8 & 0xf)
            } else {
                fat[offset] = fat[offset] & 0x0f | UInt8((value & 0xf) << 4)
                fat[offset + 1] = UInt8(truncatingIfNeeded: value >> 4)
            }
        }
    }

    private mutating func setBegin(of entry: Int, _ cluster: UInt32) {
        put16(&directory, entry * 32 + 26, UInt16(cluster & 0xffff))
        put16(&directory, entry * 32 + 20, UInt16(cluster >> 16 & 0xffff))
    }

    /// Adds the entries of directory mapping `index` and a mapping for each subdirectory and
    /// non-empty file, in the order the host lists them.
    private mutating func readDirectory(_ index: Int) throws(BlockError) {
        let path = mappings[index].path
        let firstCluster = mappings[index].begin
        let parentCluster: UInt32 = mappings[index].parent >= 0 ? mappings[mappings[index].parent].begin : 0xffff_ffff
        guard let handle = opendir(path) else {
            throw .invalid("Could not read directory \(path)")
        }
        defer { closedir(handle) }
        let first = firstCluster == 0 ? 0 : entryCount
        mappings[index].firstEntry = first
        if firstCluster != 0 {
            for dots in [".", ".."] {
                var entry = [UInt8](repeating: 0, count: 32)
                entry.replaceSubrange(0..<11, with: [UInt8](repeating: 0x20, count: 11))
                entry.replaceSubrange(0..<dots.utf8.count, with: Array(dots.utf8))
                directory += entry
            }
        }
        while let item = readdir(handle) {
            let name = withUnsafePointer(to: &item.pointee.d_name) {
                String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self))
            }
            if firstCluster == 0 && entryCount >= rootEntries - 1 {
                throw .invalid("Could not read directory \(path): too many entries in the root directory")
            }
            let isDot = name == "."
            let isDotDot = name == ".."
            if firstCluster == 0 && (isDot || isDotDot) { continue }
            let full = path + "/" + name
            var info = stat()
            guard stat(full, &info) == 0 else { continue }
            let isDirectory = info.st_mode & S_IFMT == S_IFDIR
            let entryIndex: Int
            if isDot || isDotDot {
                entryIndex = isDot ? first : first + 1
            } else {
                entryIndex = addNamedEntry(name, directoryStart: first)
            }
            let base = entryIndex * 32
            directory[base + 11] = isDirectory ? 0x10 : 0x20
            directory[base + 12] = 0
            directory[base + 13] = 0
            put16(&directory, base + 14, Self.fatTime(info.st_ctim.tv_sec))
            put16(&directory, base + 16, Self.fatDate(info.st_ctim.tv_sec))
            put16(&directory, base + 18, Self.fatDate(info.st_atim.tv_sec))
            put16(&directory, base + 20, 0)
            put16(&directory, base + 22, Self.fatTime(info.st_mtim.tv_sec))
            put16(&directory, base + 24, Self.fatDate(info.st_mtim.tv_sec))
            if isDotDot {
                setBegin(of: entryIndex, parentCluster)
            } else if isDot {
                setBegin(of: entryIndex, firstCluster)
            } else {
                put16(&directory, base + 26, 0)
            }
            guard info.st_size <= 0x7fff_ffff else { throw .invalid("File \(full) is larger than 2GB") }
            put32(&directory, base + 28, isDirectory ? 0 : UInt32(info.st_size))
            if !isDot && !isDotDot && (isDirectory || info.st_size > 0) {
                var mapping = VvfatMapping(
                    begin: 0, end: 0, entryIndex: entryCount - 1, firstEntry: -1, parent: index, path: full,
                    isDirectory: isDirectory, size: UInt64(info.st_size))
                mapping.identity = (UInt64(info.st_dev), UInt64(info.st_ino))
                if isDirectory && containsItself(mapping) {
                    throw .invalid("Could not read directory \(full): it contains itself through a symbolic link")
                }
                mappings.append(mapping)
            }
        }
        let perCluster = 0x10 * Int(VvfatLayout.sectorsPerCluster)
        while entryCount % perCluster != 0 { directory += [UInt8](repeating: 0, count: 32) }
        if fatType != 32 && index == 0 && entryCount < rootEntries {
            directory += [UInt8](repeating: 0, count: (rootEntries - entryCount) * 32)
        }
        mappings[index].end = firstCluster + UInt32((entryCount - first) * 32 / VvfatLayout.clusterSize)
        setBegin(of: mappings[index].entryIndex, mappings[index].begin)
    }

    /// True when a directory about to be added is one of its own ancestors (a symbolic-link loop,
    /// which QEMU follows until the disk is full).
    private func containsItself(_ mapping: VvfatMapping) -> Bool {
        var ancestor = mapping.parent
        while ancestor >= 0 {
            let identity = ancestor == 0 ? rootIdentity() : mappings[ancestor].identity
            if identity == mapping.identity { return true }
            ancestor = mappings[ancestor].parent
        }
        return false
    }

    private func rootIdentity() -> (device: UInt64, inode: UInt64) {
        var info = stat()
        guard stat(mappings[0].path, &info) == 0 else { return (0, 0) }
        return (UInt64(info.st_dev), UInt64(info.st_ino))
    }

    /// Appends the long-name entries and the short entry of `name`; returns the short entry's index.
    private mutating func addNamedEntry(_ name: String, directoryStart: Int) -> Int {
        let long = VvfatNames.longEntries(name)
        let longStart = entryCount
        for entry in long { directory += entry }
        let (base, lossy) = VvfatNames.shortBase(name)
        let baseLength = base[0..<8].firstIndex(of: 0x20) ?? 8
        var short = base
        var number = lossy ? 1 : 0
        while number < 999_999 {
            short = number > 0 ? VvfatNames.withTail(base, baseLength: baseLength, number: number) : base
            if !isDuplicate(short, from: directoryStart, before: entryCount) { break }
            number += 1
        }
        var entry = [UInt8](repeating: 0, count: 32)
        entry.replaceSubrange(0..<11, with: short)
        directory += entry
        let sum = VvfatNames.checksum(short[0..<11])
        for index in longStart..<(longStart + long.count) { directory[index * 32 + 13] = sum }
        return entryCount - 1
    }

    private func isDuplicate(_ name: [UInt8], from start: Int, before end: Int) -> Bool {
        for index in start..<end where directory[index * 32 + 11] != 0x0f {
            if directory[(index * 32)..<(index * 32 + 11)].elementsEqual(name) { return true }
        }
        return false
    }

    private mutating func writeBootSector(media: UInt8, heads: UInt32, sectors: UInt32, label: [UInt8]) {
        var boot = [UInt8](repeating: 0, count: 512)
        boot.replaceSubrange(0..<3, with: [0xeb, 0x3e, 0x90])
        boot.replaceSubrange(3..<11, with: Array("MSWIN4.1".utf8))
        put16(&boot, 11, 0x200)
        boot[13] = UInt8(VvfatLayout.sectorsPerCluster)
        put16(&boot, 14, 1)
        boot[16] = 2
        put16(&boot, 17, UInt16(rootEntries))
        put16(&boot, 19, sectorCount > 0xffff ? 0 : UInt16(sectorCount))
        boot[21] = media
        put16(&boot, 22, UInt16(truncatingIfNeeded: sectorsPerFat))
        put16(&boot, 24, UInt16(sectors))
        put16(&boot, 26, UInt16(heads))
        put32(&boot, 28, offsetToBootsector)
        put32(&boot, 32, sectorCount > 0xffff ? sectorCount : 0)
        boot[36] = offsetToBootsector == 0 ? 0 : 0x80
        boot[38] = 0x29
        put32(&boot, 39, 0xfabe_1afd)
        boot.replaceSubrange(43..<54, with: label)
        boot.replaceSubrange(54..<62, with: Array((fatType == 12 ? "FAT12   " : "FAT16   ").utf8))
        boot[510] = 0x55
        boot[511] = 0xaa
        let start = Int(offsetToBootsector) * 512
        firstSectors.replaceSubrange(start..<start + 512, with: boot)
    }

    private mutating func writeMBR(cylinders: UInt32, heads: UInt32, sectors: UInt32) {
        func chs(_ position: UInt32) -> ([UInt8], Bool) {
            let sector = position % sectors
            let head = position / sectors % heads
            let cylinder = position / sectors / heads
            guard cylinder < cylinders else { return ([0xff, 0xff, 0xff], true) }
            return ([UInt8(head), UInt8(truncatingIfNeeded: (sector + 1) | (cylinder >> 8) << 6), UInt8(truncatingIfNeeded: cylinder)], false)
        }
        put32(&firstSectors, 0x1b8, 0xbe1a_fdfa)
        let start = chs(offsetToBootsector)
        let end = chs(totalSectors - 1)
        let lba = start.1 || end.1
        let partition = 0x1be
        firstSectors[partition] = 0x80
        firstSectors.replaceSubrange(partition + 1..<partition + 4, with: start.0)
        firstSectors[partition + 4] = fatType == 12 ? 0x01 : fatType == 16 ? (lba ? 0x0e : 0x06) : (lba ? 0x0c : 0x0b)
        firstSectors.replaceSubrange(partition + 5..<partition + 8, with: end.0)
        put32(&firstSectors, partition + 8, offsetToBootsector)
        put32(&firstSectors, partition + 12, totalSectors - offsetToBootsector)
        firstSectors[510] = 0x55
        firstSectors[511] = 0xaa
    }

    /// FAT time (seconds / 2, minutes, hours) and date (day, month, years since 1980) in local time.
    static func fatTime(_ seconds: Int) -> UInt16 {
        var clock = time_t(seconds)
        var parts = tm()
        localtime_r(&clock, &parts)
        return UInt16(truncatingIfNeeded: parts.tm_sec / 2 | parts.tm_min << 5 | parts.tm_hour << 11)
    }

    static func fatDate(_ seconds: Int) -> UInt16 {
        var clock = time_t(seconds)
        var parts = tm()
        localtime_r(&clock, &parts)
        return UInt16(truncatingIfNeeded: parts.tm_mday | (parts.tm_mon + 1) << 5 | (parts.tm_year - 80) << 9)
    }
}

private func put16(_ bytes: inout [UInt8], _ at: Int, _ value: UInt16) {
    bytes[at] = UInt8(value & 0xff)
    bytes[at + 1] = UInt8(value >> 8)
}

private func put32(_ bytes: inout [UInt8], _ at: Int, _ value: UInt32) {
    for index in 0..<4 { bytes[at + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(index))) }
}
