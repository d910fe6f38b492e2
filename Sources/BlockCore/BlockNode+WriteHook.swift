extension PolicyBits {
    /// A block job's write hook is installed (bit 3 is `dirtyBitmaps`).
    static let writeHook: UInt8 = 1 << 4
}

extension BlockNode {
    /// The installed write hook, or nil; one load when there is none.
    @inline(__always)
    var currentWriteHook: (any WriteHook)? {
        guard policyBits.load(ordering: .relaxed) & PolicyBits.writeHook != 0 else { return nil }
        return hook.withLock { $0 }
    }

    /// Whether a block job's write hook is installed.
    public var hasWriteHook: Bool { currentWriteHook != nil }

    /// Puts `hook` around every later write, zero-write and discard of the node; false (nothing
    /// changes) when another hook is installed. Turns the node's direct (`aio=native`) path off
    /// while it is installed, so that no write goes around it.
    public func installWriteHook(_ new: any WriteHook) -> Bool {
        policyLock.withLock { _ in
            hook.withLock { slot in
                guard slot == nil else { return false }
                slot = new
                policyBits.bitwiseOr(PolicyBits.writeHook, ordering: .sequentiallyConsistent)
                return true
            }
        }
    }

    /// Removes `old` if it is the installed hook; requests that already entered it finish in it.
    public func removeWriteHook(_ old: any WriteHook) {
        policyLock.withLock { _ in
            hook.withLock { slot in
                guard let current = slot, current === old else { return }
                slot = nil
                policyBits.bitwiseAnd(~PolicyBits.writeHook, ordering: .sequentiallyConsistent)
            }
        }
    }
}
