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
            guard let node = bitmapNode(arguments.node) else {
                throw .generic("Cannot find device='\(arguments.node)' nor node-name='\(arguments.node)'")
            }
            guard !arguments.name.isEmpty else { throw .generic("Bitmap name cannot be empty") }
            let granularity: UInt64
            if let asked = arguments.granularity {
                guard asked >= 512, asked & (asked - 1) == 0 else { throw .generic("Granularity must be power of 2 and at least 512") }
                granularity = UInt64(asked)
            } else {
                let cluster = (node.driver as? Qcow2Driver).map { UInt64($0.header.clusterSize) }
                granularity = node.defaultBitmapGranularity(clusterSize: cluster)
            }
            let persistent = arguments.persistent ?? false
            if persistent, let problem = node.driver.persistentBitmapProblem(name: arguments.name, granularity: granularity, nodeName: node.name) {
                throw .generic(problem)
            }
            if node.dirtyBitmaps.find(arguments.name) != nil { throw .generic("Bitmap already exists: \(arguments.name)") }
            guard arguments.name.utf8.count <= 1023 else { throw .generic("Bitmap name too long: \(arguments.name)") }
            do throws(DirtyBitmapError) {
                try node.dirtyBitmaps.add(
                    name: arguments.name, granularity: granularity, size: node.length, persistent: persistent,
                    disabled: arguments.disabled ?? false)
            } catch {
                throw .generic(error.message)
            }
            Log.info("node '\(node.name)': dirty bitmap '\(arguments.name)' added (granularity \(granularity)\(persistent ? ", persistent" : ""))")
            return QAPIEmpty()
        }
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
            let target = try lookupBitmap(node: arguments.node, name: arguments.target)
            var sources: [DirtyBitmap] = []
            for (index, source) in arguments.bitmaps.enumerated() {
                switch source {
                case .string(let name):
                    sources.append(try lookupBitmap(node: arguments.node, name: name).bitmap)
                case .object(let members):
                    guard case .string(let node)? = members["node"], case .string(let name)? = members["name"], members.count == 2 else {
                        throw .generic("Invalid parameter type for 'bitmaps[\(index)]', expected: BlockDirtyBitmap")
                    }
                    sources.append(try lookupBitmap(node: node, name: name).bitmap)
                default:
                    throw .generic("Invalid parameter type for 'bitmaps[\(index)]', expected: BlockDirtyBitmapOrStr")
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
            for source in sources where source !== target.bitmap { target.bitmap.merge(from: source) }
            return QAPIEmpty()
        }
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
