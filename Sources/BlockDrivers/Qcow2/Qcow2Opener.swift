#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import JSON
import LogOptionsClock

/// Opens `qcow2` nodes: reads and checks the header and tables, and opens the backing chain.
public enum Qcow2Opener {
    /// Opens a qcow2 node.
    public static let opener: DriverOpener = { options, context throws(OptionError) in
        guard let file = try context.child("file", of: options) else {
            throw options.missing("file")
        }
        return try context.graph.openingImage(fileIdentity(file)) { () throws(OptionError) in
            try open(options, context: context, file: file)
        }
    }

    /// The identity of the file under an image (device and inode where it is a local file), to find loops.
    static func fileIdentity(_ file: BlockNode) -> String {
        let path = file.driver.filename
        var info = stat()
        guard stat(path, &info) == 0 else { return path }
        return "\(info.st_dev):\(info.st_ino)"
    }

    private static func open(_ options: OptionReader, context: OpenContext, file: BlockNode) throws(OptionError) -> OpenedDriver {
        let readOnly = context.common.readOnly
        try context.requireWritable([file], of: options)
        func fail(_ message: String) -> OptionError { options.failure(message) }
        let header: Qcow2Header
        let l1: [UInt64]
        let refcountTable: [UInt64]
        do throws(BlockError) {
            if !readOnly, try readHeader(file).isDirty {
                // Left dirty with lazy refcounts: recount before use, as the format requires.
                let report = try Qcow2Check.run(file: file, repair: .all)
                Log.info("qcow2 '\(file.driver.filename)': repaired refcounts of a dirty image (\(report.leaksFixed) leaks, \(report.corruptionsFixed) errors fixed)")
            }
            header = try readHeader(file)
            file.debugEvent(.reftableLoad)
            l1 = Qcow2Bytes.words(try readBytes(file, at: header.l1TableOffset, count: Int(header.l1Size) * 8))
            refcountTable = Qcow2Bytes.words(try readBytes(
                file, at: header.refcountTableOffset, count: Int(header.refcountTableClusters) << Int(header.clusterBits)))
        } catch {
            // QEMU's wording through QMP for a file that is not qcow2 at all.
            let notQcow2 = error.message.hasPrefix("not a qcow2 image") || error.message.hasPrefix("image is too short to be qcow2")
            throw options.failure("'\(file.driver.filename)': \(error.message)", qmp: notQcow2 ? "Image is not in qcow2 format" : nil)
        }
        if header.isCorrupt && !readOnly {
            throw fail("qcow2 image '\(file.driver.filename)' is marked corrupt; it can only be opened read-only (repair it with 'blockimg check -r all')")
        }
        var snapshotRegions: [(start: UInt64, length: UInt64)] = []
        if !readOnly {
            switch Qcow2OpenCheck.check(file: file, header: header, l1: l1, refcountTable: refcountTable) {
            case .damaged(let problem):
                throw fail("qcow2 image '\(file.driver.filename)' is damaged (\(problem)); it can only be opened read-only "
                    + "(repair it with 'blockimg check -r all')")
            case .sound(let regions):
                snapshotRegions = regions
            }
        }
        let cacheSize = try options.size("cache-size")
        let l2Bytes = try options.size("l2-cache-size")
        let refcountBytes = try options.size("refcount-cache-size")
        _ = try options.size("l2-cache-entry-size")
        let cleanInterval = try options.unsigned("cache-clean-interval") ?? 600
        _ = try options.bool("lazy-refcounts")
        let passRequest = try options.bool("pass-discard-request") ?? context.common.discardUnmap
        _ = try options.bool("pass-discard-snapshot")
        _ = try options.bool("pass-discard-other")
        let overlap = try overlapCheck(options)
        let clusterSize = UInt64(header.clusterSize)
        // Default: enough L2 cache for the whole disk, within 32 MiB.
        let fullCoverage = (header.size + clusterSize / 8 * clusterSize - 1) / (clusterSize / 8 * clusterSize) * clusterSize
        var l2Cache = l2Bytes ?? min(max(fullCoverage, 1 << 20), 32 << 20)
        var refcountCache = refcountBytes ?? max(l2Cache / 4, 256 << 10)
        if let cacheSize, l2Bytes == nil, refcountBytes == nil {
            refcountCache = max(cacheSize / 4, clusterSize * 4)
            l2Cache = cacheSize - min(refcountCache, cacheSize)
        }
        let backing = try ImageBacking.open(
            options, context: context, storedName: header.backingFile, storedFormat: header.backingFormat, file: file)
        let meta = Qcow2Metadata(
            file: file, header: header, l1: l1, refcountTable: refcountTable,
            l2CacheClusters: Int(l2Cache / clusterSize), refcountCacheClusters: Int(refcountCache / clusterSize),
            overlapCheck: overlap, passDiscard: passRequest)
        meta.events = context.graph.events
        meta.nodeName = context.nodeName
        meta.checksStaleEntries = !readOnly
        meta.protectedRegions = snapshotRegions
        let bitmaps = Qcow2BitmapState()
        do throws(BlockError) {
            try loadBitmaps(file: file, meta: meta, readOnly: readOnly, into: bitmaps)
        } catch {
            throw fail("Could not load the dirty bitmaps of '\(file.driver.filename)': \(error.message)")
        }
        // Autoclear extensions this driver does not keep in step are cleared, as the format asks; the
        // bitmaps extension stays valid: its bitmaps are in use on disk from now on.
        let keep = bitmaps.ext == nil ? 0 : Qcow2Header.bitmapsAutoclearBit
        if !readOnly && header.autoclearFeatures & ~keep != 0 {
            meta.header.autoclearFeatures &= keep
            var bytes = [UInt8](repeating: 0, count: 8)
            bytes.withUnsafeMutableBytes { Qcow2Bytes.put(meta.header.autoclearFeatures, $0, 0) }
            do throws(BlockError) {
                try meta.writeBytes(bytes, at: 88)
                try file.flush()
            } catch {
                throw fail(error.message)
            }
        }
        let driver = Qcow2Driver(file: file, backing: backing, meta: meta, readOnly: readOnly, discard: context.common.discardUnmap)
        driver.bitmapState.loaded = bitmaps.loaded
        driver.bitmapState.directory = bitmaps.directory
        driver.bitmapState.ext = bitmaps.ext
        driver.startCacheCleaning(every: cleanInterval)
        var children: [(role: String, node: BlockNode)] = [("file", file)]
        if let backing { children.append(("backing", backing)) }
        return OpenedDriver(driver: driver, children: children)
    }

    /// Reads the header cluster of an image.
    /// Reads and validates the header of the image in `file`.
    public static func readHeader(_ file: BlockNode) throws(BlockError) -> Qcow2Header {
        let probe = try readBytes(file, at: 0, count: Int(min(file.length, 4096)))
        guard probe.count >= 24 else { throw .invalid("image is too short to be qcow2") }
        let clusterBits = probe.withUnsafeBytes { Qcow2Bytes.u32($0, 20) }
        let clusterSize = clusterBits >= 9 && clusterBits <= 21 ? 1 << Int(clusterBits) : 4096
        let bytes = clusterSize > probe.count ? try readBytes(file, at: 0, count: Int(min(file.length, UInt64(clusterSize)))) : probe
        return try Qcow2Header.parse(bytes, fileLength: file.length)
    }

    static func readBytes(_ file: BlockNode, at offset: UInt64, count: Int) throws(BlockError) -> [UInt8] {
        guard offset <= file.length, UInt64(count) <= file.length - offset else {
            throw .invalid("a table at \(offset)+\(count) lies past the end of the file (\(file.length) bytes)")
        }
        var bytes = [UInt8](repeating: 0, count: count)
        if count > 0 { try bytes.withMutableBytes { (raw) throws(BlockError) in try file.read(into: raw, at: offset) } }
        return bytes
    }

    private static func overlapCheck(_ options: OptionReader) throws(OptionError) -> Qcow2OverlapCheck {
        guard let value = options.value("overlap-check") else { return .cached }
        switch value {
        case .string(let name):
            guard let mode = Qcow2OverlapCheck(rawValue: name) else {
                throw options.badValue("overlap-check", name, expected: "none, constant, cached or all")
            }
            return mode
        case .object:
            let flags = try OptionReader(value, context: options.context, prefix: "overlap-check.", syntax: options.syntax)
            let template = try flags.choice("template", ["none", "constant", "cached", "all"]).flatMap(Qcow2OverlapCheck.init) ?? .cached
            var any = false
            for key in ["main-header", "active-l1", "active-l2", "refcount-table", "refcount-block", "snapshot-table",
                        "inactive-l1", "inactive-l2", "bitmap-directory"] {
                if try flags.bool(key) == true { any = true }
            }
            try flags.finish()
            return any && template == .none ? .constant : template
        default:
            throw options.badValue("overlap-check", value.typeName, expected: "a mode or an object of flags")
        }
    }
}
