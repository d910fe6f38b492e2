import BlockCore
import LogOptionsClock
import BlockDrivers
import JSON
import QAPI

extension Daemon {
    /// The dirty bitmap commands: add, remove, clear, enable, disable, merge, and the sha256 of a
    /// bitmap's bits for tests.
    func registerBitmapCommands(on table: QMPCommandTable) {
        table.register(BlockDirtyBitmapAddCommand.self) { [unowned self] arguments throws(QAPIError) in try blockDirtyBitmapAdd(arguments) }
        table.register(BlockDirtyBitmapRemoveCommand.self) { [unowned self] arguments throws(QAPIError) in try blockDirtyBitmapRemove(arguments) }
        table.register(BlockDirtyBitmapClearCommand.self) { [unowned self] arguments throws(QAPIError) in try blockDirtyBitmapClear(arguments) }
        table.register(BlockDirtyBitmapEnableCommand.self) { [unowned self] arguments throws(QAPIError) in try blockDirtyBitmapEnable(arguments) }
        table.register(BlockDirtyBitmapDisableCommand.self) { [unowned self] arguments throws(QAPIError) in try blockDirtyBitmapDisable(arguments) }
        table.register(BlockDirtyBitmapMergeCommand.self) { [unowned self] arguments throws(QAPIError) in try blockDirtyBitmapMerge(arguments) }
        table.register(XDebugBlockDirtyBitmapSha256Command.self) { [unowned self] arguments throws(QAPIError) in try blockDirtyBitmapSha256(arguments) }
    }

    /// `block-dirty-bitmap-add`: checked in QEMU's order (node, name, granularity, persistence).
    func blockDirtyBitmapAdd(_ arguments: BlockDirtyBitmapAdd) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            _ = try addBitmap(arguments)
            return QAPIEmpty()
        }
    }

    /// Checks and adds a bitmap (the command, and the transaction action); the caller holds the lock.
    func addBitmap(_ arguments: BlockDirtyBitmapAdd) throws(QAPIError) -> (node: BlockNode, bitmap: DirtyBitmap) {
        guard let node = bitmapNode(arguments.node) else {
            throw .generic("Cannot find device='\(arguments.node)' nor node-name='\(arguments.node)'")
        }
        let cluster = (node.driver as? Qcow2Driver).map { UInt64($0.header.clusterSize) }
        let bitmap: DirtyBitmap
        do throws(DirtyBitmapError) {
            bitmap = try node.addDirtyBitmap(
                name: arguments.name, granularity: arguments.granularity.map { UInt64($0) }, clusterSize: cluster,
                persistent: arguments.persistent ?? false, disabled: arguments.disabled ?? false)
        } catch {
            throw .generic(error.message)
        }
        Log.info("node '\(node.name)': dirty bitmap '\(arguments.name)' added (granularity \(bitmap.granularity)\(bitmap.persistent ? ", persistent" : ""))")
        return (node, bitmap)
    }

    /// `block-dirty-bitmap-remove`: refused while the bitmap is busy; an inconsistent one can be removed.
    func blockDirtyBitmapRemove(_ arguments: BlockDirtyBitmap) throws(QAPIError) -> QAPIEmpty {
        try bitmapChange(arguments) { (set, _) throws(DirtyBitmapError) in
            try set.remove(arguments.name)
            Log.info("node '\(arguments.node)': dirty bitmap '\(arguments.name)' removed")
        }
    }

    /// `block-dirty-bitmap-clear`.
    func blockDirtyBitmapClear(_ arguments: BlockDirtyBitmap) throws(QAPIError) -> QAPIEmpty {
        try bitmapChange(arguments) { (set, _) throws(DirtyBitmapError) in try set.clear(arguments.name) }
    }

    /// `block-dirty-bitmap-enable`.
    func blockDirtyBitmapEnable(_ arguments: BlockDirtyBitmap) throws(QAPIError) -> QAPIEmpty {
        try bitmapChange(arguments) { (set, _) throws(DirtyBitmapError) in try set.setEnabled(arguments.name, true) }
    }

    /// `block-dirty-bitmap-disable`.
    func blockDirtyBitmapDisable(_ arguments: BlockDirtyBitmap) throws(QAPIError) -> QAPIEmpty {
        try bitmapChange(arguments) { (set, _) throws(DirtyBitmapError) in try set.setEnabled(arguments.name, false) }
    }

    /// `block-dirty-bitmap-merge`: every source is found and checked before the target changes.
    func blockDirtyBitmapMerge(_ arguments: BlockDirtyBitmapMerge) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            let (target, sources) = try mergeOperands(arguments)
            for source in sources where source !== target.bitmap { target.bitmap.merge(from: source) }
            return QAPIEmpty()
        }
    }

    /// The target and sources of a merge, found and checked as QEMU's `block_dirty_bitmap_merge`
    /// does; the caller holds the lock.
    func mergeOperands(_ arguments: BlockDirtyBitmapMerge, path: String = "") throws(QAPIError) -> (target: (bitmap: DirtyBitmap, set: DirtyBitmapSet), sources: [DirtyBitmap]) {
        let target = try lookupBitmap(node: arguments.node, name: arguments.target)
        var sources: [DirtyBitmap] = []
        for (index, source) in arguments.bitmaps.enumerated() {
            switch source {
            case .string(let name):
                sources.append(try lookupBitmap(node: arguments.node, name: name).bitmap)
            case .object(let members):
                let named = try BlockDirtyBitmap(decoding: .object(members), at: "\(path)bitmaps[\(index)]")
                sources.append(try lookupBitmap(node: named.node, name: named.name).bitmap)
            default:
                throw .generic("Invalid parameter type for '\(path)bitmaps[\(index)]', expected: BlockDirtyBitmapOrStr")
            }
        }
        do throws(DirtyBitmapError) {
            try target.set.check(target.bitmap, allow: [])
            for source in sources {
                try target.set.check(source, allow: [.busy, .readOnly])
            }
        } catch {
            throw .generic(error.message)
        }
        return (target, sources)
    }

    /// `x-debug-block-dirty-bitmap-sha256`.
    func blockDirtyBitmapSha256(_ arguments: BlockDirtyBitmap) throws(QAPIError) -> BlockDirtyBitmapSha256 {
        try locked { () throws(QAPIError) in
            BlockDirtyBitmapSha256(sha256: try lookupBitmap(node: arguments.node, name: arguments.name).bitmap.sha256)
        }
    }

    // MARK: - Helpers

    /// A device's medium or a node, as QEMU's `bdrv_lookup_bs(name, name)` finds it.
    func bitmapNode(_ name: String) -> BlockNode? {
        devices[name]?.medium ?? graph.node(named: name)
    }

    /// A bitmap and the set that holds it, or QEMU's "Node '...' not found" / "Dirty bitmap '...' not found".
    func lookupBitmap(node name: String, name bitmap: String) throws(QAPIError) -> (bitmap: DirtyBitmap, set: DirtyBitmapSet) {
        guard let node = bitmapNode(name) else { throw .generic("Node '\(name)' not found") }
        guard let found = node.dirtyBitmaps.find(bitmap) else { throw .generic("Dirty bitmap '\(bitmap)' not found") }
        return (found, node.dirtyBitmaps)
    }

    /// Runs a change of one bitmap's set under the control lock, worded errors and all.
    private func bitmapChange(
        _ arguments: BlockDirtyBitmap, _ change: (DirtyBitmapSet, DirtyBitmap) throws(DirtyBitmapError) -> Void
    ) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            let found = try lookupBitmap(node: arguments.node, name: arguments.name)
            do throws(DirtyBitmapError) {
                try change(found.set, found.bitmap)
            } catch {
                throw .generic(error.message)
            }
            return QAPIEmpty()
        }
    }

    /// The `dirty-bitmaps` of a node as query-block and query-named-block-nodes list them, or nil
    /// when it has none.
    func dirtyBitmapInfo(_ node: BlockNode) -> [BlockDirtyInfo]? {
        let bitmaps = node.dirtyBitmaps.all
        guard !bitmaps.isEmpty else { return nil }
        return bitmaps.map { bitmap in
            let busy = bitmap.busy
            var info = BlockDirtyInfo(
                name: bitmap.name, count: Int64(clamping: bitmap.count), granularity: UInt32(clamping: bitmap.granularity),
                status: busy ? .frozen : (bitmap.enabled ? .active : .disabled),
                recording: bitmap.recording, busy: busy, persistent: bitmap.persistent)
            if bitmap.inconsistent { info.inconsistent = true }
            return info
        }
    }
}
