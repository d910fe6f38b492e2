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

extension BlockNode {
    /// Checks and adds a dirty bitmap in QEMU's order and words (`block-dirty-bitmap-add` after the
    /// node was found; `qemu-img bitmap --add`): name, granularity, persistence, uniqueness, length.
    /// `clusterSize` is the format's (for the default granularity), nil when it has none.
    public func addDirtyBitmap(
        name: String, granularity asked: UInt64?, clusterSize: UInt64?, persistent: Bool, disabled: Bool
    ) throws(DirtyBitmapError) -> DirtyBitmap {
        guard !name.isEmpty else { throw DirtyBitmapError("Bitmap name cannot be empty") }
        let granularity: UInt64
        if let asked {
            guard asked >= 512, asked <= 1 << 31, asked & (asked - 1) == 0 else {
                throw DirtyBitmapError("Granularity must be power of 2 and at least 512")
            }
            granularity = asked
        } else {
            granularity = defaultBitmapGranularity(clusterSize: clusterSize)
        }
        if persistent, let problem = driver.persistentBitmapProblem(name: name, granularity: granularity, nodeName: self.name) {
            throw DirtyBitmapError(problem)
        }
        if dirtyBitmaps.find(name) != nil { throw DirtyBitmapError("Bitmap already exists: \(name)") }
        guard name.utf8.count <= 1023 else { throw DirtyBitmapError("Bitmap name too long: \(name)") }
        return try dirtyBitmaps.add(name: name, granularity: granularity, size: length, persistent: persistent, disabled: disabled)
    }
}
