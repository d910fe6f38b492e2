import BlockCore
import LogOptionsClock

/// The `throttle` filter: reads, writes and zero-writes pass through the limits of a throttle group
/// (`throttle-group`, created by `--object throttle-group`) before they reach the `file` child.
/// Several throttle nodes in one group share its limits, served in turn. Everything else forwards
/// (`FilterDriver`), and there is no mapped or direct path, so no request goes around the limits.
public final class ThrottleDriver: FilterDriver {
    public let driverName = "throttle"
    public let features: DriverFeatures
    public let child: BlockNode
    /// The group whose limits apply.
    public let group: ThrottleGroup

    /// A filter over `child` limited by `group`; it joins the group.
    public init(child: BlockNode, group: ThrottleGroup) {
        self.child = child
        self.group = group
        self.features = child.features.inheritedByFilter
        group.join(self)
    }

    /// Waits for the group's permission; never fails a request.
    private func admit(isWrite: Bool, bytes: UInt64) {
        _ = group.admit(self, isWrite: isWrite, bytes: bytes) {}
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        admit(isWrite: false, bytes: UInt64(buffer.count))
        try child.read(into: buffer, at: offset)
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        admit(isWrite: true, bytes: UInt64(buffer.count))
        try child.write(buffer, at: offset, fua: fua)
    }

    public func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockError) {
        admit(isWrite: true, bytes: length)
        try child.writeZeroes(at: offset, length: length, flags: flags)
    }

    public func close() {
        group.leave(self)
    }

    /// Opens `throttle` nodes: `throttle-group` (an existing group) and `file`, both required.
    public static let opener: DriverOpener = { options, context throws(OptionError) in
        let name = try options.requiredString("throttle-group")
        guard let group = context.graph.throttleGroups.group(named: name) else {
            throw options.failure("throttle group '\(name)' does not exist (create it with --object throttle-group,id=\(name),...)",
                                  qmp: "Throttle group '\(name)' does not exist")
        }
        let child = try context.requiredChild("file", of: options)
        try context.requireWritable([child], of: options)
        return OpenedDriver(driver: ThrottleDriver(child: child, group: group), children: [("file", child)])
    }
}
