import Synchronization

/// The throttle groups of a graph, by name: groups named by `block_set_io_throttle` come and go with
/// their members; groups of `--object throttle-group` stay until the object is deleted.
public final class ThrottleGroupRegistry: Sendable {
    private let groups = Mutex<[String: ThrottleGroup]>([:])

    /// An empty registry.
    public init() {}

    /// The group named `name`, if it exists.
    public func group(named name: String) -> ThrottleGroup? {
        groups.withLock { $0[name] }
    }

    /// Every group, by name.
    public var all: [ThrottleGroup] {
        groups.withLock { $0.values.sorted { $0.name < $1.name } }
    }

    /// The group named `name`, created with `limits` when there is none (the bool tells which).
    public func groupCreating(_ name: String, limits: ThrottleLimits, persistent: Bool = false) -> (group: ThrottleGroup, created: Bool) {
        groups.withLock { groups in
            if let existing = groups[name] { return (existing, false) }
            let group = ThrottleGroup(name: name, limits: limits, persistent: persistent)
            groups[name] = group
            return (group, true)
        }
    }

    /// Forgets a group that is not persistent once it has no members.
    public func dropIfUnused(_ group: ThrottleGroup) {
        groups.withLock { groups in
            if !group.isPersistent, group.memberCount == 0, groups[group.name] === group { groups.removeValue(forKey: group.name) }
        }
    }

    /// Removes a group regardless of persistence; false when it still has members.
    public func remove(_ name: String) -> Bool {
        groups.withLock { groups in
            guard let group = groups[name] else { return true }
            guard group.memberCount == 0 else { return false }
            groups.removeValue(forKey: name)
            return true
        }
    }
}
