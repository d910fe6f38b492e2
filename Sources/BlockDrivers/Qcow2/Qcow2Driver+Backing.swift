import BlockCore

extension Qcow2Driver: BackingChain {
    public var backingNode: BlockNode? { backing }

    public func writeBackingName(_ name: String?, format: String?) throws(BlockError) {
        guard !readOnly else { throw .notPermitted("the image is read-only") }
        lock.lock()
        defer { lock.unlock() }
        let oldLength = meta.header.serialized().count
        var header = meta.header
        header.backingFile = name
        header.backingFormat = name == nil ? nil : format
        var bytes = header.serialized()
        guard bytes.count <= clusterSize else { throw .invalid("the backing file name does not fit in the header cluster") }
        // Clear what a longer old header left behind.
        if bytes.count < oldLength { bytes += [UInt8](repeating: 0, count: oldLength - bytes.count) }
        try meta.writeBytes(bytes, at: 0)
        try file.flush()
        meta.header = header
    }

    public func setBackingNode(_ node: BlockNode?) {
        backingSlot.withLock { $0 = node }
    }
}
