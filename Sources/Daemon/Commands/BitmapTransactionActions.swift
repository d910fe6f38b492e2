import BlockCore
import JSON
import QAPI

extension Daemon {
    /// Prepares one dirty bitmap action of a `transaction` (`type` is the action's name), or
    /// returns nil when `type` is not one. The action takes effect at once, as QEMU's prepare step
    /// does, so that later actions of the same transaction see it; the returned abort undoes it.
    /// A bitmap that records while the action is pending gets a tracker, so an undo adds back the
    /// writes made meanwhile instead of losing them.
    func prepareBitmapAction(_ type: String, data: JSONValue, at path: String) throws(QAPIError) -> PreparedAction? {
        switch type {
        case "block-dirty-bitmap-add":
            let (node, bitmap) = try addBitmap(try BlockDirtyBitmapAdd(decoding: data, at: path))
            return PreparedAction(commit: {}, abort: { node.dirtyBitmaps.discard(bitmap) })
        case "block-dirty-bitmap-remove":
            return try prepareBitmapRemove(try BlockDirtyBitmap(decoding: data, at: path))
        case "block-dirty-bitmap-clear":
            return try prepareBitmapClear(try BlockDirtyBitmap(decoding: data, at: path))
        case "block-dirty-bitmap-enable":
            return try prepareBitmapEnabled(try BlockDirtyBitmap(decoding: data, at: path), true)
        case "block-dirty-bitmap-disable":
            return try prepareBitmapEnabled(try BlockDirtyBitmap(decoding: data, at: path), false)
        case "block-dirty-bitmap-merge":
            return try prepareBitmapMerge(try BlockDirtyBitmapMerge(decoding: data, at: path), path: path + ".")
        default:
            return nil
        }
    }

    /// `block-dirty-bitmap-remove` as an action: the bitmap is held busy, and removed at commit.
    private func prepareBitmapRemove(_ arguments: BlockDirtyBitmap) throws(QAPIError) -> PreparedAction {
        let (bitmap, set) = try lookupBitmap(node: arguments.node, name: arguments.name)
        do throws(DirtyBitmapError) {
            try set.check(bitmap, allow: [.inconsistent])
        } catch {
            throw .generic(error.message)
        }
        bitmap.retain()
        return PreparedAction(
            commit: {
                bitmap.release()
                set.discard(bitmap)
            },
            abort: { bitmap.release() })
    }

    /// `block-dirty-bitmap-clear` as an action: the old bits come back on abort.
    private func prepareBitmapClear(_ arguments: BlockDirtyBitmap) throws(QAPIError) -> PreparedAction {
        let (bitmap, set) = try lookupBitmap(node: arguments.node, name: arguments.name)
        do throws(DirtyBitmapError) {
            try set.check(bitmap, allow: [])
        } catch {
            throw .generic(error.message)
        }
        let saved = bitmap.copy()
        let tracker = bitmap.enabled ? set.track(like: bitmap) : nil
        bitmap.clear()
        return PreparedAction(
            commit: { if let tracker { set.untrack(tracker) } },
            abort: { Daemon.restore(bitmap, from: saved, tracker: tracker, in: set) })
    }

    /// `block-dirty-bitmap-enable` / `-disable` as an action: the old state comes back on abort.
    private func prepareBitmapEnabled(_ arguments: BlockDirtyBitmap, _ enabled: Bool) throws(QAPIError) -> PreparedAction {
        let (bitmap, set) = try lookupBitmap(node: arguments.node, name: arguments.name)
        let wasEnabled = bitmap.enabled
        // Writes made while a disable is pending go to the tracker, added back if it is undone.
        let tracker = wasEnabled && !enabled ? set.track(like: bitmap) : nil
        do throws(DirtyBitmapError) {
            try set.setEnabled(arguments.name, enabled)
        } catch {
            if let tracker { set.untrack(tracker) }
            throw .generic(error.message)
        }
        return PreparedAction(
            commit: { if let tracker { set.untrack(tracker) } },
            abort: {
                if wasEnabled != enabled { try? set.setEnabled(arguments.name, wasEnabled) }
                if let tracker {
                    bitmap.merge(from: tracker)
                    set.untrack(tracker)
                }
            })
    }

    /// `block-dirty-bitmap-merge` as an action: the target's old bits come back on abort.
    private func prepareBitmapMerge(_ arguments: BlockDirtyBitmapMerge, path: String) throws(QAPIError) -> PreparedAction {
        let (target, sources) = try mergeOperands(arguments, path: path)
        let saved = target.bitmap.copy()
        let tracker = target.bitmap.enabled ? target.set.track(like: target.bitmap) : nil
        for source in sources where source !== target.bitmap { target.bitmap.merge(from: source) }
        return PreparedAction(
            commit: { if let tracker { target.set.untrack(tracker) } },
            abort: { Daemon.restore(target.bitmap, from: saved, tracker: tracker, in: target.set) })
    }

    /// Puts back the bits a bitmap had before an undone action, plus the writes since (the tracker's).
    private static func restore(_ bitmap: DirtyBitmap, from saved: DirtyBitmap, tracker: DirtyBitmap?, in set: DirtyBitmapSet) {
        bitmap.clear()
        bitmap.merge(from: saved)
        if let tracker {
            bitmap.merge(from: tracker)
            set.untrack(tracker)
        }
    }
}
