import BlockCore
import JSON
import QAPI
import LogOptionsClock

/// The device settings of a 2.6-form `blockdev-add` with an `id` that are blockd's policies:
/// `rerror`, `werror` and `throttling.*` (with `throttling.group`).
struct DeviceOptions {
    /// `rerror`.
    var readPolicy = BlockErrorPolicy.report
    /// `werror`.
    var writePolicy = BlockErrorPolicy.report
    /// `throttling.*`, when any limit is set.
    var limits: ThrottleLimits?
    /// `throttling.group`: the group to join (the device's id when absent).
    var group: String?

    /// The keys these settings take out of the node's options (besides `throttling.*`).
    static let keys = ["rerror", "werror", "throttling"]

    /// Reads the settings taken out of `blockdev-add`'s options; checks everything, changes nothing.
    init(_ options: [String: JSONValue]) throws(QAPIError) {
        for (key, slot) in [("rerror", \DeviceOptions.readPolicy), ("werror", \DeviceOptions.writePolicy)] {
            guard let value = options[key] else { continue }
            guard case .string(let name) = value else { throw .invalidParameterType("options.\(key)", expected: "string") }
            guard let policy = BlockErrorPolicy(rawValue: name) else { throw .invalidEnumValue("options.\(key)", value: name) }
            self[keyPath: slot] = policy
        }
        var throttling: [String: JSONValue] = [:]
        if case .object(let members)? = options["throttling"] {
            throttling = members
        } else if options["throttling"] != nil {
            throw .invalidParameterType("options.throttling", expected: "object")
        }
        for (key, value) in options where key.hasPrefix("throttling.") {
            throttling[String(key.dropFirst("throttling.".count))] = value
        }
        guard !throttling.isEmpty else { return }
        do throws(OptionError) {
            let reader = try OptionReader(.object(throttling), context: "blockdev-add", prefix: "options.throttling.", syntax: .qmp)
            group = try reader.string("group")
            let limits = try ThrottleOptions.limits(from: reader)
            try reader.finish()
            self.limits = limits.isEnabled ? limits : nil
        } catch {
            throw .generic(error.message)
        }
    }

    /// Applies the settings to a new device.
    func apply(to device: BlockBackend, groups: ThrottleGroupRegistry) {
        device.readErrorPolicy = readPolicy
        device.writeErrorPolicy = writePolicy
        if let limits {
            let (group, created) = groups.groupCreating(group ?? device.id ?? "", limits: limits)
            if !created { group.setLimits(limits) }
            device.setThrottleGroup(group)
        }
    }
}
