#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import Synchronization
import LogOptionsClock

/// The `blkdebug` filter: passes every request to its `image` child, and fails requests as its
/// rules say. Events raised on the node (`BlockNode.debugEvent`, by the parent driver or by the
/// generic write path) drive a state machine (`BlkdebugMachine`) that arms `inject-error` rules;
/// the next read, write, zero-write, discard or flush an armed rule covers fails with its errno,
/// without reaching the child. Rules come from the options, from a `config` file, and can be
/// replaced while the node is in use (`replaceRules`). Everything else forwards (`FilterDriver`),
/// and there is no mapped or direct path, so no request escapes the rules.
public final class BlkdebugDriver: FilterDriver {
    public let driverName = "blkdebug"
    public let features: DriverFeatures
    public let child: BlockNode
    private let machine: Mutex<BlkdebugMachine>

    /// Creates a filter over `child` with `rules`; `align` (a power of two, or 0) raises the
    /// alignment requests must have, so that the node emulates unaligned ones.
    public init(child: BlockNode, rules: BlkdebugRuleSet, align: Int) {
        self.child = child
        self.machine = Mutex(BlkdebugMachine(rules: rules))
        var features = child.features.inheritedByFilter
        features.alignment = max(features.alignment, align)
        features.debugEvents = true
        self.features = features
    }

    /// The state of the rule machine (1 when opened).
    public var state: Int64 { machine.withLock { $0.state } }

    /// Replaces every rule, the config file's included; nothing stays armed. The state is kept, or
    /// set to `state` when given. Requests in flight finish under the old rules.
    public func replaceRules(_ rules: BlkdebugRuleSet, state: Int64? = nil) {
        machine.withLock { $0.replace(rules, state: state) }
    }

    public func debugEvent(_ event: BlkdebugEvent) {
        machine.withLock { $0.raise(event) }
    }

    /// Throws the injected error when an armed rule covers the request.
    private func check(_ what: String, at offset: UInt64, length: UInt64?) throws(BlockError) {
        guard let code = machine.withLock({ $0.failure(offset: offset, length: length) }) else { return }
        throw BlockError(errno: code, "blkdebug: injected error on \(what) at \(offset): \(String(cString: strerror(code)))")
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        try check("read", at: offset, length: UInt64(buffer.count))
        try child.read(into: buffer, at: offset)
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        try check("write", at: offset, length: UInt64(buffer.count))
        try child.write(buffer, at: offset, fua: fua)
    }

    public func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockError) {
        try check("zero-write", at: offset, length: length)
        try child.writeZeroes(at: offset, length: length, flags: flags)
    }

    public func discard(at offset: UInt64, length: UInt64) throws(BlockError) {
        try check("discard", at: offset, length: length)
        try child.discard(at: offset, length: length)
    }

    public func flush() throws(BlockError) {
        try check("flush", at: 0, length: nil)
        try child.flush()
    }

    /// Opens `blkdebug` nodes: `image` (required), `config`, `align`, `inject-error`, `set-state`.
    public static let opener: DriverOpener = { options, context throws(OptionError) in
        let image = try context.requiredChild("image", of: options)
        try context.requireWritable([image], of: options)
        let align = try options.size("align") ?? 0
        guard align == 0 || (align.nonzeroBitCount == 1 && align <= 1 << 20) else {
            throw options.failure("parameter 'align' must be a power of two up to 1M, got \(align)", qmp: "Cannot meet constraints with align \(align)")
        }
        var rules = BlkdebugRuleSet()
        if let path = try options.string("config") {
            do throws(OptionError) {
                rules = try BlkdebugConfig.read(path: path)
            } catch {
                throw options.failure(error.message)
            }
        }
        rules.append(try BlkdebugRuleSet(options: options))
        let driver = BlkdebugDriver(child: image, rules: rules, align: Int(align))
        return OpenedDriver(driver: driver, children: [("file", image)])
    }
}
