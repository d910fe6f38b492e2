#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock

/// An `inject-error` rule (`BlkdebugInjectErrorOptions`): when `event` is raised in `state`, the next
/// request that touches `sector` fails with `errno`.
public struct BlkdebugInjectError: Sendable, Equatable {
    /// The event that arms the rule.
    public var event: BlkdebugEvent
    /// The state the rule applies in; 0 for any.
    public var state: Int64 = 0
    /// The error to fail with (`EIO` when not given); 0 arms the rule without failing anything.
    public var errno: Int32 = EIO
    /// The 512-byte sector a request must touch; -1 for any (and only such rules fail flushes).
    public var sector: Int64 = -1
    /// The rule is deleted once it has failed a request.
    public var once = false
    /// QEMU fails the request from the submitting call rather than from its completion. blockd
    /// completes every request in the call that submits it, so both fail it without running it.
    public var immediately = false

    /// A rule with the defaults of the schema.
    public init(event: BlkdebugEvent) { self.event = event }
}

/// A `set-state` rule (`BlkdebugSetStateOptions`): when `event` is raised in `state`, the state becomes `newState`.
public struct BlkdebugSetState: Sendable, Equatable {
    /// The event that changes the state.
    public var event: BlkdebugEvent
    /// The state the rule applies in; 0 for any.
    public var state: Int64 = 0
    /// The state afterwards.
    public var newState: Int64

    /// A rule.
    public init(event: BlkdebugEvent, state: Int64 = 0, newState: Int64) {
        self.event = event
        self.state = state
        self.newState = newState
    }
}

/// The rules of a blkdebug node, in the order they were given (config file first, then options).
public struct BlkdebugRuleSet: Sendable, Equatable {
    public var injectErrors: [BlkdebugInjectError] = []
    public var setStates: [BlkdebugSetState] = []

    /// No rules.
    public init() {}

    /// The `inject-error` and `set-state` lists of an options object (QMP or key=value syntax).
    public init(options: OptionReader) throws(OptionError) {
        for rule in try options.objects("inject-error") { injectErrors.append(try BlkdebugInjectError(rule)) }
        for rule in try options.objects("set-state") { setStates.append(try BlkdebugSetState(rule)) }
    }

    /// Appends another set's rules after these.
    public mutating func append(_ other: BlkdebugRuleSet) {
        injectErrors += other.injectErrors
        setStates += other.setStates
    }

    /// The `event` member of a rule.
    static func event(_ rule: OptionReader) throws(OptionError) -> BlkdebugEvent {
        BlkdebugEvent(name: try rule.requiredChoice("event", BlkdebugEvent.allCases.map(\.name)))!
    }
}

extension BlkdebugInjectError {
    /// The rule one options object describes; every member is read, unknown ones refused.
    public init(_ rule: OptionReader) throws(OptionError) {
        self.init(event: try BlkdebugRuleSet.event(rule))
        state = try rule.integer("state") ?? 0
        if let code = try rule.integer("errno") {
            guard code >= 0, code < 4096 else { throw rule.badValue("errno", String(code), expected: "an errno value") }
            errno = Int32(code)
        }
        sector = try rule.integer("sector") ?? -1
        once = try rule.bool("once") ?? false
        immediately = try rule.bool("immediately") ?? false
        try rule.finish()
    }
}

extension BlkdebugSetState {
    /// The rule one options object describes; every member is read, unknown ones refused.
    public init(_ rule: OptionReader) throws(OptionError) {
        let event = try BlkdebugRuleSet.event(rule)
        let state = try rule.integer("state") ?? 0
        self.init(event: event, state: state, newState: try rule.requiredInteger("new_state"))
        try rule.finish()
    }
}

/// The blkdebug state machine (QEMU's `blkdebug_debug_event` and `inject_error`), a pure value:
/// raising an event applies the `set-state` rules and arms the `inject-error` rules of that event
/// in the current state; a request then fails when an armed rule covers it.
public struct BlkdebugMachine: Sendable {
    /// The current state; 1 when the node opens.
    public private(set) var state: Int64 = 1
    /// Inject rules by slot; a `once` rule that fired is nil.
    private var injects: [BlkdebugInjectError?] = []
    private var injectsByEvent: [[Int]]
    private var setStatesByEvent: [[BlkdebugSetState]]
    /// Slots of the armed rules, in the order the rules were given.
    private var armed: [Int] = []

    /// A machine in state 1 with `rules`.
    public init(rules: BlkdebugRuleSet = BlkdebugRuleSet()) {
        injectsByEvent = Array(repeating: [], count: BlkdebugEvent.allCases.count)
        setStatesByEvent = injectsByEvent.map { _ in [] }
        load(rules)
    }

    /// Replaces every rule (none stays armed); the state is kept, or set to `state` when given.
    public mutating func replace(_ rules: BlkdebugRuleSet, state newState: Int64? = nil) {
        injects.removeAll()
        armed.removeAll()
        for index in injectsByEvent.indices {
            injectsByEvent[index].removeAll()
            setStatesByEvent[index].removeAll()
        }
        load(rules)
        if let newState { state = newState }
    }

    /// True while at least one rule is armed.
    public var isArmed: Bool { !armed.isEmpty }

    private mutating func load(_ rules: BlkdebugRuleSet) {
        for rule in rules.injectErrors {
            injectsByEvent[Int(rule.event.rawValue)].append(injects.count)
            injects.append(rule)
        }
        for rule in rules.setStates { setStatesByEvent[Int(rule.event.rawValue)].append(rule) }
    }

    /// Raises `event`: every inject rule of the event that applies in the current state is armed,
    /// replacing what was armed (when at least one applies); then the first set-state rule of the
    /// event that applies in the current state changes the state.
    public mutating func raise(_ event: BlkdebugEvent) {
        let index = Int(event.rawValue)
        var injected = false
        for slot in injectsByEvent[index] {
            guard let rule = injects[slot], rule.state == 0 || rule.state == state else { continue }
            if !injected {
                armed.removeAll(keepingCapacity: true)
                injected = true
            }
            armed.append(slot)
        }
        if let change = setStatesByEvent[index].first(where: { $0.state == 0 || $0.state == state }) {
            state = change.newState
        }
    }

    /// The errno a request on `[offset, offset+length)` fails with, or nil when it may run; a
    /// `once` rule that fires is deleted. A flush (`length` nil) is failed only by rules for any sector.
    public mutating func failure(offset: UInt64, length: UInt64?) -> Int32? {
        guard !armed.isEmpty else { return nil }
        let first = Int64(clamping: offset / 512)
        let end = length.map { Int64(clamping: (offset + $0 + 511) / 512) } ?? first
        guard let position = armed.firstIndex(where: { slot in
            let sector = injects[slot]!.sector
            return sector == -1 || (length != nil && sector >= first && sector < max(end, first + 1))
        }) else { return nil }
        let slot = armed[position]
        let rule = injects[slot]!
        guard rule.errno != 0 else { return nil }
        if rule.once {
            armed.remove(at: position)
            injects[slot] = nil
            injectsByEvent[Int(rule.event.rawValue)].removeAll { $0 == slot }
        }
        return rule.errno
    }
}
