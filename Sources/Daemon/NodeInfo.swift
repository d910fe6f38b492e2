import BlockCore
import BlockDrivers
import QAPI

/// How query-named-block-nodes and query-block describe a node, member by member as QEMU 7.2 fills
/// them in (`bdrv_block_device_info`, `bdrv_query_image_info` in block/qapi.c).
extension Daemon {
    /// A node as BlockDeviceInfo describes it. `device` is the device whose medium it is, for
    /// query-block (its throttling and write cache); query-named-block-nodes passes none, so its
    /// limits are zero, as in QEMU. `flat` leaves out the images below the node.
    func blockDeviceInfo(_ node: BlockNode, device: BlockBackend?, flat: Bool = false) -> BlockDeviceInfo {
        var depth: Int64 = 0
        var image = imageInfo(node)
        if !flat {
            // The chain below: each image's backing file or filtered child, as "backing-image".
            var chain: [ImageInfo] = []
            var next = filteredOrBackingChild(of: node)
            while let below = next, chain.count < BlockGraph.maxChainDepth {
                chain.append(imageInfo(below))
                next = filteredOrBackingChild(of: below)
            }
            depth = Int64(chain.count)
            var below: ImageInfo?
            for info in chain.reversed() {
                var linked = info
                linked.backingImage = below
                below = linked
            }
            image.backingImage = below
        }
        let backing = node.driver.driverName == "qcow2" ? node.children.first { $0.role == "backing" }?.node : nil
        var info = BlockDeviceInfo(
            file: qemuFilename(node).filename, nodeName: node.name, ro: node.readOnly, drv: node.driver.driverName,
            backingFile: backing.map { qemuFilename($0).filename }, backingFileDepth: depth, encrypted: false,
            encryptionKeyMissing: false, detectZeroes: BlockdevDetectZeroesOptions(rawValue: node.detectZeroes.name) ?? .off,
            bps: 0, bpsRd: 0, bpsWr: 0, iops: 0, iopsRd: 0, iopsWr: 0, image: image,
            cache: BlockdevCacheInfo(writeback: true, direct: node.common.cacheDirect, noFlush: node.common.cacheNoFlush),
            writeThreshold: Int64(clamping: node.writeThreshold))
            .withThrottling(device?.throttleGroup)
        info.dirtyBitmaps = dirtyBitmapInfo(node)
        return info
    }

    /// One image, without the images below it.
    func imageInfo(_ node: BlockNode) -> ImageInfo {
        var info = ImageInfo(
            filename: qemuFilename(node).filename, format: node.driver.driverName,
            actualSize: actualSize(node).map { Int64(clamping: $0) }, virtualSize: Int64(clamping: Daemon.sectorRounded(node.length)))
        if let details = driverInfo(node) {
            info.clusterSize = details.clusterSize.map { Int64($0) }
            info.dirtyFlag = details.dirty
        }
        if let qcow2 = node.driver as? Qcow2Driver {
            let header = qcow2.header
            info.formatSpecific = Daemon.qcow2Details(header)
            if let name = header.backingFile, !name.isEmpty {
                info.backingFilename = name
                info.fullBackingFilename = fullBackingFilename(node, header: header)
                info.backingFilenameFormat = header.backingFormat
            }
            if header.snapshotCount > 0, let file = node.children.first(where: { $0.role == "file" })?.node,
               let snapshots = try? Qcow2Snapshots.list(file: file, header: header) {
                info.snapshots = snapshots.map { snapshot in
                    SnapshotInfo(
                        id: snapshot.id, name: snapshot.name, vmStateSize: Int64(clamping: snapshot.vmStateSize),
                        dateSec: Int64(snapshot.dateSeconds), dateNsec: Int64(snapshot.dateNanoseconds),
                        vmClockSec: Int64(clamping: snapshot.vmClockNanoseconds / 1_000_000_000),
                        vmClockNsec: Int64(clamping: snapshot.vmClockNanoseconds % 1_000_000_000),
                        icount: snapshot.icount.map { Int64(clamping: $0) })
                }
            }
        }
        if let rbd = node.driver as? RBDDriver {
            // As QEMU's rbd driver: the name as id too, the snapshot's size as vm-state-size, no dates.
            let snapshots = rbd.snapshots().map {
                SnapshotInfo(id: $0.name, name: $0.name, vmStateSize: Int64(clamping: $0.size), dateSec: 0, dateNsec: 0, vmClockSec: 0, vmClockNsec: 0)
            }
            if !snapshots.isEmpty { info.snapshots = snapshots }
        }
        return info
    }

    /// A size as QEMU reports it: in whole 512-byte sectors (a file of 196616 bytes is 197120).
    static func sectorRounded(_ length: UInt64) -> UInt64 {
        length > UInt64.max - 511 ? length : (length + 511) / 512 * 512
    }

    /// QEMU's `bdrv_get_allocated_file_size`: a file's allocated bytes, 0 for null drivers, nothing
    /// for the protocol-like filters (blkdebug, blkverify), a filter's child's, a format's children's
    /// (backing files excluded) summed.
    func actualSize(_ node: BlockNode, depth: Int = 0) -> UInt64? {
        guard depth < 64 else { return nil }
        switch node.driver.driverName {
        case "file", "host_device", "host_cdrom": return node.driver.allocatedSize
        case "null-co", "null-aio": return 0
        case "blkdebug", "blkverify": return nil
        case "throttle": return node.children.first.flatMap { actualSize($0.node, depth: depth + 1) }
        default:
            var total: UInt64 = 0
            for (role, child) in node.children where role != "backing" {
                guard let size = actualSize(child, depth: depth + 1) else { return nil }
                total += size
            }
            return total
        }
    }

    /// QEMU's `bdrv_get_info`: the cluster size (qcow2) and the dirty flag, for the drivers that
    /// answer it (files, formats, and filters through their child); nil where QEMU gets ENOTSUP.
    func driverInfo(_ node: BlockNode, depth: Int = 0) -> (clusterSize: Int?, dirty: Bool)? {
        guard depth < 64 else { return nil }
        switch node.driver.driverName {
        case "file", "host_device", "host_cdrom":
            return (nil, false)
        case "qcow2":
            guard let qcow2 = node.driver as? Qcow2Driver else { return nil }
            let header = qcow2.header
            return (header.clusterSize, header.isDirty)
        case "raw", "throttle", "blkdebug", "blkverify":
            return node.children.first { $0.role == "file" }.flatMap { driverInfo($0.node, depth: depth + 1) }
        default:
            return nil
        }
    }

    /// ImageInfoSpecific of a qcow2 image: level 1.1 images tell their feature bits too.
    static func qcow2Details(_ header: Qcow2Header) -> ImageInfoSpecific {
        let compression: Qcow2CompressionType = header.compressionType == 1 ? .zstd : .zlib
        let details: ImageInfoSpecificQCow2
        if header.version >= 3 {
            details = ImageInfoSpecificQCow2(
                compat: "1.1", lazyRefcounts: header.lazyRefcounts, corrupt: header.isCorrupt,
                refcountBits: Int64(header.refcountBits), extendedL2: header.incompatibleFeatures & (1 << 4) != 0,
                compressionType: compression)
        } else {
            details = ImageInfoSpecificQCow2(compat: "0.10", refcountBits: Int64(header.refcountBits), compressionType: compression)
        }
        return .object(["type": .string("qcow2"), "data": details.json])
    }
}
