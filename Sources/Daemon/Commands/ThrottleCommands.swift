import BlockCore
import QAPI
import LogOptionsClock

extension Daemon {
    /// `block_set_io_throttle`: a device's limits and throttle group, changed while clients run.
    func registerThrottleCommands(on table: QMPCommandTable) {
        table.register(BlockSetIoThrottleCommand.self) { [unowned self] arguments throws(QAPIError) in try self.blockSetIoThrottle(arguments) }
    }

    /// `block_set_io_throttle`: sets the I/O limits of a device.
    func blockSetIoThrottle(_ arguments: BlockSetIoThrottleArguments) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            guard let name = arguments.device ?? arguments.id, (arguments.device == nil) != (arguments.id == nil) else {
                throw .generic("Need exactly one of 'device' and 'id'")
            }
            let device = try backend(name)
            let limits = try Daemon.throttleLimits(arguments)
            let groups = graph.throttleGroups
            guard limits.isEnabled else {
                if let old = device.setThrottleGroup(nil) {
                    groups.dropIfUnused(old)
                    Log.info("device '\(name)': throttling off (left group '\(old.name)')")
                }
                return QAPIEmpty()
            }
            let groupName = arguments.group ?? device.throttleGroup?.name ?? name
            guard BlockGraph.isValidNodeName(groupName) else { throw .invalidParameterValue("group", expects: "a valid group name") }
            let (group, created) = groups.groupCreating(groupName, limits: limits)
            if !created { group.setLimits(limits) }
            if let old = device.setThrottleGroup(group) { groups.dropIfUnused(old) }
            Log.info("device '\(name)': throttle group '\(groupName)' limits set")
            return QAPIEmpty()
        }
    }

    /// The limits of block_set_io_throttle's arguments, checked (QEMU's messages).
    static func throttleLimits(_ arguments: BlockSetIoThrottleArguments) throws(QAPIError) -> ThrottleLimits {
        let given: [(ThrottleLimits.Kind, Int64, Int64?, Int64?)] = [
            (.bpsTotal, arguments.bps, arguments.bpsMax, arguments.bpsMaxLength),
            (.bpsRead, arguments.bpsRd, arguments.bpsRdMax, arguments.bpsRdMaxLength),
            (.bpsWrite, arguments.bpsWr, arguments.bpsWrMax, arguments.bpsWrMaxLength),
            (.iopsTotal, arguments.iops, arguments.iopsMax, arguments.iopsMaxLength),
            (.iopsRead, arguments.iopsRd, arguments.iopsRdMax, arguments.iopsRdMaxLength),
            (.iopsWrite, arguments.iopsWr, arguments.iopsWrMax, arguments.iopsWrMaxLength),
        ]
        var limits = ThrottleLimits()
        let range = "bps/iops/max values must be within [0, \(ThrottleLimits.maximumValue)]"
        for (kind, average, burst, length) in given {
            guard average >= 0, (burst ?? 0) >= 0 else { throw .generic(range) }
            if let length, length < 1 { throw .generic("bps_max_length/iops_max_length must be at least 1") }
            if length != nil && burst == nil {
                throw .generic("bps_max_length/iops_max_length require corresponding bps_max/iops_max values")
            }
            limits[kind] = ThrottleLimits.Limit(average: UInt64(average), burst: UInt64(burst ?? 0), burstSeconds: UInt64(length ?? 1))
        }
        if let size = arguments.iopsSize {
            guard size >= 0 else { throw .generic("iops_size must be within [0, \(ThrottleLimits.maximumValue)]") }
            limits.iopsSize = UInt64(size)
        }
        if let problem = limits.problem { throw .generic(problem) }
        return limits
    }
}

extension BlockDeviceInfo {
    /// The info with the limits and name of `group` filled in (all zero without a group).
    func withThrottling(_ group: ThrottleGroup?) -> BlockDeviceInfo {
        guard let group else { return self }
        let limits = group.limits
        var info = self
        func value(_ kind: ThrottleLimits.Kind) -> Int64 { Int64(clamping: limits[kind].average) }
        func burst(_ kind: ThrottleLimits.Kind) -> Int64 { Int64(clamping: limits[kind].burst) }
        func length(_ kind: ThrottleLimits.Kind) -> Int64 { Int64(clamping: limits[kind].burstSeconds) }
        info.bps = value(.bpsTotal)
        info.bpsRd = value(.bpsRead)
        info.bpsWr = value(.bpsWrite)
        info.iops = value(.iopsTotal)
        info.iopsRd = value(.iopsRead)
        info.iopsWr = value(.iopsWrite)
        info.bpsMax = burst(.bpsTotal)
        info.bpsRdMax = burst(.bpsRead)
        info.bpsWrMax = burst(.bpsWrite)
        info.iopsMax = burst(.iopsTotal)
        info.iopsRdMax = burst(.iopsRead)
        info.iopsWrMax = burst(.iopsWrite)
        info.bpsMaxLength = length(.bpsTotal)
        info.bpsRdMaxLength = length(.bpsRead)
        info.bpsWrMaxLength = length(.bpsWrite)
        info.iopsMaxLength = length(.iopsTotal)
        info.iopsRdMaxLength = length(.iopsRead)
        info.iopsWrMaxLength = length(.iopsWrite)
        info.iopsSize = Int64(clamping: limits.iopsSize)
        info.group = group.name
        return info
    }
}
