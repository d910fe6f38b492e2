/// The points of the block layer at which a `blkdebug` node can act: QEMU's `BlkdebugEvent`
/// (block-core.json), the same values in the same order, spelt as the contract spells them in `name`.
///
/// A driver raises an event on a child with `child.debugEvent(.l2Load)` where QEMU calls
/// `BLKDBG_EVENT(bs->file, BLKDBG_L2_LOAD)`; the generic node raises `flush_to_os`, `flush_to_disk`
/// (on its `file` child) and the `pwritev*` events (on itself). Raising an event on a node that is not
/// a `blkdebug` node costs one branch.
public enum BlkdebugEvent: UInt8, CaseIterable, Sendable {
    /// `l1_update`: an L1 table entry is written.
    case l1Update
    /// `l1_grow_alloc_table`: space for a larger L1 table is allocated.
    case l1GrowAllocTable
    /// `l1_grow_write_table`: the larger L1 table is written.
    case l1GrowWriteTable
    /// `l1_grow_activate_table`: the header switches to the larger L1 table.
    case l1GrowActivateTable
    /// `l2_load`: an L2 table is read.
    case l2Load
    /// `l2_update`: an L2 table entry is written.
    case l2Update
    /// `l2_update_compressed`: an L2 entry for a compressed cluster is written.
    case l2UpdateCompressed
    /// `l2_alloc_cow_read`: a new L2 table's old contents are read.
    case l2AllocCowRead
    /// `l2_alloc_write`: a new L2 table is written.
    case l2AllocWrite
    /// `read_aio`: guest data is read from the child (raw, qcow2 data clusters).
    case readAio
    /// `read_backing_aio`: data is read from the backing file.
    case readBackingAio
    /// `read_compressed`: a compressed cluster is read.
    case readCompressed
    /// `write_aio`: guest data is written to the child (raw, qcow2 data clusters).
    case writeAio
    /// `write_compressed`: a compressed cluster is written.
    case writeCompressed
    /// `vmstate_load`: saved machine state is read.
    case vmstateLoad
    /// `vmstate_save`: machine state is saved.
    case vmstateSave
    /// `cow_read`: copy-on-write reads the old data.
    case cowRead
    /// `cow_write`: copy-on-write writes the copied data.
    case cowWrite
    /// `reftable_load`: the refcount table is read.
    case reftableLoad
    /// `reftable_grow`: the refcount table grows.
    case reftableGrow
    /// `reftable_update`: a refcount table entry is written.
    case reftableUpdate
    /// `refblock_load`: a refcount block is read.
    case refblockLoad
    /// `refblock_update`: a refcount block is written.
    case refblockUpdate
    /// `refblock_update_part`: part of a refcount block is written.
    case refblockUpdatePart
    /// `refblock_alloc`: a refcount block is allocated.
    case refblockAlloc
    /// `refblock_alloc_hookup`: a new refcount block is linked in.
    case refblockAllocHookup
    /// `refblock_alloc_write`: a new refcount block is written.
    case refblockAllocWrite
    /// `refblock_alloc_write_blocks`: refcount blocks for a new table are written.
    case refblockAllocWriteBlocks
    /// `refblock_alloc_write_table`: a new refcount table is written.
    case refblockAllocWriteTable
    /// `refblock_alloc_switch_table`: the header switches to the new refcount table.
    case refblockAllocSwitchTable
    /// `cluster_alloc`: clusters are allocated.
    case clusterAlloc
    /// `cluster_alloc_bytes`: bytes inside a cluster are allocated.
    case clusterAllocBytes
    /// `cluster_free`: clusters are freed.
    case clusterFree
    /// `flush_to_os`: a flush starts (raised by every node on its `file` child).
    case flushToOs
    /// `flush_to_disk`: a flush reaches stable storage (raised by every node on its `file` child).
    case flushToDisk
    /// `pwritev_rmw_head`: the head of an unaligned write is read (raised by a node on itself).
    case pwritevRmwHead
    /// `pwritev_rmw_after_head`: the head of an unaligned write has been read.
    case pwritevRmwAfterHead
    /// `pwritev_rmw_tail`: the tail of an unaligned write is read.
    case pwritevRmwTail
    /// `pwritev_rmw_after_tail`: the tail of an unaligned write has been read.
    case pwritevRmwAfterTail
    /// `pwritev`: an aligned write reaches the driver (raised by a node on itself).
    case pwritev
    /// `pwritev_zero`: an aligned zero-write reaches the driver.
    case pwritevZero
    /// `pwritev_done`: a write or zero-write has left the driver, failed or not.
    case pwritevDone
    /// `empty_image_prepare`: an image is being emptied.
    case emptyImagePrepare

    /// The contract's spelling (`l2_load`, `flush_to_os`, ...).
    public var name: String { BlkdebugEvent.names[Int(rawValue)] }

    /// The event the contract spells `name`, or nil.
    public init?(name: String) {
        guard let index = BlkdebugEvent.names.firstIndex(of: name) else { return nil }
        self.init(rawValue: UInt8(index))
    }

    private static let names: [String] = [
        "l1_update", "l1_grow_alloc_table", "l1_grow_write_table", "l1_grow_activate_table", "l2_load", "l2_update",
        "l2_update_compressed", "l2_alloc_cow_read", "l2_alloc_write", "read_aio", "read_backing_aio",
        "read_compressed", "write_aio", "write_compressed", "vmstate_load", "vmstate_save", "cow_read", "cow_write",
        "reftable_load", "reftable_grow", "reftable_update", "refblock_load", "refblock_update",
        "refblock_update_part", "refblock_alloc", "refblock_alloc_hookup", "refblock_alloc_write",
        "refblock_alloc_write_blocks", "refblock_alloc_write_table", "refblock_alloc_switch_table", "cluster_alloc",
        "cluster_alloc_bytes", "cluster_free", "flush_to_os", "flush_to_disk", "pwritev_rmw_head",
        "pwritev_rmw_after_head", "pwritev_rmw_tail", "pwritev_rmw_after_tail", "pwritev", "pwritev_zero",
        "pwritev_done", "empty_image_prepare",
    ]
}
