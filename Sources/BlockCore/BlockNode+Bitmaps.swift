/// Dirty bitmaps on a node: the policy bit that sends writes past `dirtyBitmaps.mark`, and what
/// the control plane asks of a node about its bitmaps.
extension BlockNode {
    /// Connects the node's bitmap set: its policy bit follows whether any bitmap records, and the
    /// driver adds the bitmaps its image holds.
    func attachDirtyBitmaps() {
        dirtyBitmaps.onRecordingChange { [weak self] recording in
            guard let self else { return }
            policyLock.withLock { _ in
                if recording {
                    _ = policyBits.bitwiseOr(PolicyBits.dirtyBitmaps, ordering: .relaxed)
                } else {
                    _ = policyBits.bitwiseAnd(~PolicyBits.dirtyBitmaps, ordering: .relaxed)
                }
            }
        }
        driver.attachBitmaps(dirtyBitmaps, nodeName: name)
    }

    /// The granularity a new bitmap gets when none is asked for (QEMU's
    /// `bdrv_get_default_bitmap_granularity`): the cluster size within 4 KiB to 64 KiB, else 64 KiB.
    public func defaultBitmapGranularity(clusterSize: UInt64?) -> UInt64 {
        guard let clusterSize, clusterSize > 0 else { return 65536 }
        return min(max(clusterSize, 4096), 65536)
    }
}
