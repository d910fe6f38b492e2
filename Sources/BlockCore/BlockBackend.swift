import Synchronization

/// A device: what exports (and later jobs) attach to instead of a node. It holds the device's I/O
/// accounting, its tray and the medium behind it, which can be swapped while clients are connected.
///
/// A device has an id when `blockdev-add` (2.6 form, top-level `id`) created it; an export of a node
/// that no device holds gets an anonymous one. Per-device policies (throttling, rerror/werror,
/// io-status) belong here too.
///
/// Requests find the medium through `generation`: one atomic load per request, compared with the
/// generation of the medium they cached; only after a tray or medium change do they call `current()`,
/// which takes the lock.
public final class BlockBackend: Sendable {
    /// A medium as requests hold it. The node stays usable as long as a request path holds this object;
    /// nodes handed to `closeWhenReleased` are closed once the last holder lets go.
    public final class Medium: Sendable {
        /// The node requests go to.
        public let node: BlockNode
        private let owned = Mutex<[BlockNode]>([])

        init(_ node: BlockNode) { self.node = node }

        /// Closes `nodes` (already taken out of the graph) when nothing holds this medium any more.
        public func closeWhenReleased(_ nodes: [BlockNode]) {
            owned.withLock { $0 += nodes }
        }

        deinit {
            BlockGraph.closeParentsFirst(owned.withLock { $0 })
        }
    }

    /// Why a medium change was refused.
    public enum MediumError: Error, Equatable {
        /// The device's medium cannot be removed or changed.
        case notRemovable
        /// The tray must be open first.
        case trayClosed
        /// A medium is inserted already.
        case mediumPresent
    }

    private struct State {
        var medium: Medium?
        var trayOpen = false
        /// Whether the last medium was read-only (`read-only-mode=retain` of blockdev-change-medium).
        var readOnly: Bool
        /// The throttle group the device belongs to.
        var throttle: ThrottleGroup?
    }

    /// The device's id, or nil for the anonymous device of an export.
    public let id: String?
    /// I/O accounting (query-blockstats).
    public let stats: BlockStats
    /// Whether the medium may be removed and changed (`removable` of query-block).
    public let isRemovable: Bool
    /// Where BLOCK_IO_ERROR goes (nil: nowhere; anonymous devices send none).
    public let events: BlockEventSink?
    private let state: Mutex<State>
    private let changes = Atomic<UInt64>(0)
    /// `throttledFlag` and `pausedFlag`: whether requests must call `admit`.
    let admissionFlags = Atomic<UInt8>(0)
    /// rerror in the low, werror in the high four bits (indexes into `BlockErrorPolicy.allCases`).
    let errorPolicies = Atomic<UInt8>(0)
    let ioStatusValue = Atomic<UInt8>(0)
    let pauseGate = PauseGate()

    /// Creates a device with `medium` inserted (or none) and the tray closed.
    public init(
        id: String?, medium: BlockNode?, stats: BlockStats = BlockStats(), removable: Bool = true, events: BlockEventSink? = nil
    ) {
        self.id = id
        self.stats = stats
        self.isRemovable = removable
        self.events = events
        self.state = Mutex(State(medium: medium.map(Medium.init), readOnly: medium?.readOnly ?? false))
    }

    /// Changes with every tray movement and medium change: a medium got from `current()` is the one to
    /// use as long as this is still the generation `current()` returned.
    @inline(__always)
    public var generation: UInt64 { changes.load(ordering: .acquiring) }

    /// The medium requests go to now — nil while none is inserted or the tray is open — and its generation.
    public func current() -> (medium: Medium?, generation: UInt64) {
        state.withLock { state in (state.trayOpen ? nil : state.medium, changes.load(ordering: .relaxed)) }
    }

    /// The inserted medium, whether or not the tray is open.
    public var medium: BlockNode? { state.withLock { $0.medium?.node } }

    /// Whether the tray is open.
    public var isTrayOpen: Bool { state.withLock { $0.trayOpen } }

    /// Whether the last medium inserted was read-only (kept while the device is empty).
    public var lastReadOnly: Bool { state.withLock { $0.readOnly } }

    /// Opens or closes the tray; false when it already was in that position.
    @discardableResult
    public func moveTray(open: Bool) -> Bool {
        change { state in
            guard state.trayOpen != open else { return false }
            state.trayOpen = open
            return true
        }
    }

    /// Takes the medium out (the tray must be open); returns it, nil when there was none.
    public func removeMedium() throws(MediumError) -> Medium? {
        try change { state throws(MediumError) in
            guard isRemovable else { throw .notRemovable }
            guard state.trayOpen else { throw .trayClosed }
            defer { state.medium = nil }
            return state.medium
        }
    }

    /// Puts `node` in as the medium; the tray must be open and empty.
    public func insertMedium(_ node: BlockNode) throws(MediumError) {
        try change { state throws(MediumError) in
            guard isRemovable else { throw .notRemovable }
            guard state.trayOpen else { throw .trayClosed }
            guard state.medium == nil else { throw .mediumPresent }
            state.medium = Medium(node)
            state.readOnly = node.readOnly
        }
    }

    /// Opens the tray, swaps `node` in for the medium and closes the tray, as one change: requests
    /// go from the old medium straight to the new one. Returns the old medium and whether the tray was open.
    public func changeMedium(to node: BlockNode) throws(MediumError) -> (old: Medium?, trayWasOpen: Bool) {
        try change { state throws(MediumError) in
            guard isRemovable else { throw .notRemovable }
            defer {
                state.medium = Medium(node)
                state.readOnly = node.readOnly
                state.trayOpen = false
            }
            return (state.medium, state.trayOpen)
        }
    }

    /// Puts `new` in place of the medium when the medium is `old` (a block job's pivot or a live
    /// snapshot), whatever the tray and removability: requests go on to `new`. Returns the medium
    /// taken out, nil (nothing changed) when `old` is not the medium.
    public func replaceMedium(_ old: BlockNode, with new: BlockNode) -> Medium? {
        change { state -> Medium? in
            guard let current = state.medium, current.node === old else { return nil }
            state.medium = Medium(new)
            state.readOnly = new.readOnly
            return current
        }
    }

    /// The throttle group the device belongs to, if any.
    public var throttleGroup: ThrottleGroup? { state.withLock { $0.throttle } }

    /// Moves the device into `group` (nil: out of any); returns the group it left, if any.
    @discardableResult
    public func setThrottleGroup(_ group: ThrottleGroup?) -> ThrottleGroup? {
        let old: ThrottleGroup? = change { state in
            let old = state.throttle
            guard old !== group else { return nil }
            state.throttle = group
            group?.join(self)
            if group == nil {
                admissionFlags.bitwiseAnd(~BlockBackend.throttledFlag, ordering: .releasing)
            } else {
                admissionFlags.bitwiseOr(BlockBackend.throttledFlag, ordering: .releasing)
            }
            return old
        }
        old?.leave(self)
        return old
    }

    /// Sets or clears an admission flag and starts a new generation, so requests see it.
    func setAdmissionFlag(_ flag: UInt8, _ on: Bool) {
        change { _ -> Void in
            if on {
                admissionFlags.bitwiseOr(flag, ordering: .releasing)
            } else {
                admissionFlags.bitwiseAnd(~flag, ordering: .releasing)
            }
        }
    }

    /// Runs a change of the state and starts a new generation.
    private func change<T: Sendable, E: Error>(_ body: (inout State) throws(E) -> T) throws(E) -> T {
        try state.withLock { state throws(E) in
            let result = try body(&state)
            changes.add(1, ordering: .releasing)
            return result
        }
    }
}
