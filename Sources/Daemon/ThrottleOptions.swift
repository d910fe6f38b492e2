import BlockCore
import LogOptionsClock

/// One `--object throttle-group,id=ID,limits.*=...`: a named group that throttle nodes and devices join.
public struct ThrottleGroupSpec: Sendable, Equatable {
    /// `id`: the group's name.
    public var id: String
    /// `limits.*`.
    public var limits: ThrottleLimits
}

/// Reading throttle limits in the spelling of QEMU's `ThrottleLimits` (`bps-total`, `iops-read-max`,
/// `bps-write-max-length`, `iops-size`), as `limits.*` of a throttle-group object and `throttling.*`
/// of a device use it.
enum ThrottleOptions {
    /// The option stem of each limit kind.
    static func stem(_ kind: ThrottleLimits.Kind) -> String {
        switch kind {
        case .bpsTotal: return "bps-total"
        case .bpsRead: return "bps-read"
        case .bpsWrite: return "bps-write"
        case .iopsTotal: return "iops-total"
        case .iopsRead: return "iops-read"
        case .iopsWrite: return "iops-write"
        }
    }

    /// Every key `limits(from:)` reads.
    static let keys: Set<String> = {
        var keys: Set<String> = ["iops-size"]
        for kind in ThrottleLimits.Kind.allCases {
            let stem = stem(kind)
            keys.formUnion([stem, "\(stem)-max", "\(stem)-max-length"])
        }
        return keys
    }()

    /// The limits in `reader` (unknown keys are left for the caller's `finish`), checked. In QMP
    /// syntax the values are QEMU's signed integers, and the messages QEMU's alone.
    static func limits(from reader: OptionReader) throws(OptionError) -> ThrottleLimits {
        func read(_ key: String) throws(OptionError) -> UInt64? {
            guard reader.syntax == .qmp else { return try reader.unsigned(key) }
            guard let value = try reader.integer(key) else { return nil }
            guard value >= 0, UInt64(value) <= ThrottleLimits.maximumValue else {
                throw OptionError("bps/iops/max values must be within [0, \(ThrottleLimits.maximumValue)]")
            }
            return UInt64(value)
        }
        var limits = ThrottleLimits()
        for kind in ThrottleLimits.Kind.allCases {
            let stem = stem(kind)
            var limit = ThrottleLimits.Limit()
            limit.average = try read(stem) ?? 0
            limit.burst = try read("\(stem)-max") ?? 0
            limit.burstSeconds = try read("\(stem)-max-length") ?? 1
            limits[kind] = limit
        }
        limits.iopsSize = try read("iops-size") ?? 0
        if let problem = limits.problem {
            throw OptionError(reader.syntax == .qmp ? problem : "\(reader.context): \(problem)")
        }
        return limits
    }

    /// Reads one `--object` (or object-add's arguments, in QMP syntax, whose id the caller checks):
    /// only `throttle-group` objects exist in blockd.
    static func parseObject(_ value: OptionValue, syntax: OptionSyntax = .commandLine) throws(OptionError) -> ThrottleGroupSpec {
        let reader = try OptionReader(value, context: "--object", syntax: syntax)
        let type = try reader.requiredString("qom-type")
        guard type == "throttle-group" else {
            throw OptionError("--object: unknown object type '\(type)' (blockd knows throttle-group, tls-creds-x509, tls-creds-psk, tls-creds-anon, authz-simple, authz-list, authz-listfile, secret)")
        }
        let id = try reader.requiredString("id")
        guard syntax == .qmp || BlockGraph.isValidNodeName(id) else { throw OptionError("--object: invalid id '\(id)'") }
        // QEMU's flat legacy properties (x-bps-total=...) or the `limits` struct, not both.
        var flat: [String: OptionValue] = [:]
        for key in ThrottleOptions.keys.sorted() {
            if let value = reader.value("x-\(key)") { flat[key] = value }
        }
        let limits: ThrottleLimits
        if let inner = try reader.object("limits") {
            guard flat.isEmpty else { throw OptionError("--object throttle-group '\(id)': give either limits.* or x-* properties, not both") }
            limits = try ThrottleOptions.limits(from: inner)
            try inner.finish()
        } else if !flat.isEmpty {
            limits = try ThrottleOptions.limits(from: OptionReader(.object(flat), context: reader.context, prefix: "x-", syntax: syntax))
        } else {
            limits = ThrottleLimits()
        }
        try reader.finish()
        return ThrottleGroupSpec(id: id, limits: limits)
    }
}
