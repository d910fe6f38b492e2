import BlockCore
import Exports
import QAPI

extension Daemon {
    /// The meta contexts of an export: `base:allocation`, `qemu:allocation-depth` when asked for,
    /// and one `qemu:dirty-bitmap:NAME` per bitmap, checked as QEMU's `nbd_export_create` checks
    /// them: found by name on the exported node or below it through filters and backing files (or
    /// by node and name), not busy nor inconsistent, and not recording under a read-only export of
    /// a node that takes writes.
    func exportContexts(_ spec: ExportSpec, node: BlockNode?) throws(QAPIError) -> [MetaContext] {
        var contexts: [MetaContext] = spec.allocationDepth ? [.baseAllocation, .allocationDepth] : [.baseAllocation]
        for (index, wanted) in spec.bitmaps.enumerated() {
            let bitmap: DirtyBitmap
            let holder: BlockNode?
            if let nodeName = wanted.node {
                bitmap = try lookupBitmap(node: nodeName, name: wanted.name).bitmap
                holder = node
            } else {
                var candidate = node
                var found: DirtyBitmap?
                while let current = candidate, found == nil {
                    found = current.dirtyBitmaps.find(wanted.name)
                    if found == nil { candidate = filteredOrBackingChild(of: current) }
                }
                guard let found else { throw .generic("Bitmap '\(wanted.name)' is not found") }
                bitmap = found
                holder = candidate
            }
            do throws(DirtyBitmapError) {
                try node?.dirtyBitmaps.check(bitmap, allow: [.readOnly])
            } catch {
                throw .generic(error.message)
            }
            if !spec.writable, let holder, !holder.readOnly, bitmap.enabled {
                throw .generic("Enabled bitmap '\(wanted.name)' incompatible with readonly export")
            }
            contexts.append(.dirtyBitmap(bitmap, index: index))
        }
        return contexts
    }
}
