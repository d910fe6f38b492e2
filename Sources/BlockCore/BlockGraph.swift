import Synchronization
import LogOptionsClock

/// Settings every node takes besides its driver's own (BlockdevOptionsBase in the schema).
public struct CommonNodeOptions: Sendable {
    /// `read-only`.
    public var readOnly = false
    /// `cache.direct`: bypass the host page cache (O_DIRECT).
    public var cacheDirect = false
    /// `cache.no-flush`: ignore flush requests.
    public var cacheNoFlush = false
    /// `discard=unmap` (true) or `ignore` (false).
    public var discardUnmap = false
    /// `aio`: `threads` or `native`.
    public var aio = "threads"
    /// `detect-zeroes`: the node's setting when it opens; `BlockNode.setDetectZeroes` changes it live.
    public var detectZeroes = DetectZeroes.off

    /// The defaults: writeback cache, flushes honoured, discards ignored, `aio=threads`.
    public init() {}
}

/// A driver instance with the children it opened.
public struct OpenedDriver: Sendable {
    /// The driver.
    public var driver: any BlockDriver
    /// Its children by role.
    public var children: [(role: String, node: BlockNode)]

    /// Bundles a driver with its children.
    public init(driver: any BlockDriver, children: [(role: String, node: BlockNode)] = []) {
        self.driver = driver
        self.children = children
    }
}

/// What a driver's `open` gets besides its own options: the common settings and access to the graph.
public struct OpenContext {
    /// The graph being built.
    public let graph: BlockGraph
    /// The name the new node will have.
    public let nodeName: String
    /// The common settings.
    public let common: CommonNodeOptions

    /// Resolves a child given as a node-name reference or as an inline definition.
    public func child(_ key: String, of options: OptionReader) throws(OptionError) -> BlockNode? {
        guard let value = options.value(key) else { return nil }
        return try child(value, named: key, of: options)
    }

    /// Resolves a child that must be given: through QMP a missing one is worded as QEMU's filters
    /// word it ("A block device must be specified for ...").
    public func requiredChild(_ key: String, of options: OptionReader) throws(OptionError) -> BlockNode {
        guard let node = try child(key, of: options) else {
            throw options.failure("parameter '\(key)' is missing", qmp: "A block device must be specified for \"\(key)\"")
        }
        return node
    }

    /// Refuses read-only children under a node that is to be writable.
    public func requireWritable(_ children: [BlockNode], of options: OptionReader) throws(OptionError) {
        guard !common.readOnly, let child = children.first(where: \.readOnly) else { return }
        throw OptionError("\(options.context): child '\(child.name)' is read-only; add read-only=on")
    }

    /// Resolves every child of a list (`children` of quorum), named `key[0]`, `key[1]`, ... in
    /// messages; an absent key is an empty list.
    public func children(_ key: String, of options: OptionReader) throws(OptionError) -> [BlockNode] {
        guard let value = options.value(key) else { return [] }
        guard case .array(let items) = value else {
            throw options.failure("parameter '\(key)' expects a list (\(key).0=...), got a \(value.typeName)",
                                  qmp: "Invalid parameter type for '\(key)', expected: array")
        }
        var nodes: [BlockNode] = []
        for (index, item) in items.enumerated() {
            nodes.append(try child(item, named: options.syntax == .qmp ? "\(key)[\(index)]" : "\(key).\(index)", of: options))
        }
        return nodes
    }

    private func child(_ value: OptionValue, named key: String, of options: OptionReader) throws(OptionError) -> BlockNode {
        switch value {
        case .string(let reference):
            guard let node = graph.node(named: reference) else {
                throw options.failure("parameter '\(key)': no node named '\(reference)'",
                                      qmp: "Cannot find device='\(reference)' nor node-name='\(reference)'")
            }
            return node
        case .object:
            return try graph.open(
                value, context: "\(options.context) → \(key)", inheritReadOnly: common.readOnly, syntax: options.syntax,
                prefix: "\(options.memberPrefix)\(key).")
        default:
            throw options.failure("parameter '\(key)' expects a node-name or a definition, got a \(value.typeName)",
                                  qmp: "Invalid parameter type for '\(key)', expected: string or object")
        }
    }
}

/// Opens a driver from its options; one per driver name (or family of names).
public typealias DriverOpener = @Sendable (OptionReader, OpenContext) throws(OptionError) -> OpenedDriver

/// A driver the graph can open: the option names it takes (besides the common ones) and its opener.
public struct DriverEntry: Sendable {
    /// The driver's own top-level option names.
    public let keys: Set<String>
    /// Opens a node.
    public let open: DriverOpener

    /// Describes a driver.
    public init(keys: Set<String>, open: @escaping DriverOpener) {
        self.keys = keys
        self.open = open
    }
}

/// The live graph: every node by name, and the drivers that can be opened.
public final class BlockGraph: Sendable {
    private let openers: [String: DriverEntry]
    /// Where the graph's nodes (and drivers, through `OpenContext.graph`) send their events.
    public let events = BlockEventSink()
    /// The throttle groups devices and `throttle` nodes belong to.
    public let throttleGroups = ThrottleGroupRegistry()
    /// Option names every node takes (BlockdevOptionsBase).
    public static let commonKeys: Set<String> = [
        "driver", "node-name", "read-only", "auto-read-only", "force-share", "cache", "discard", "aio", "detect-zeroes",
    ]
    private let nodes = Mutex<[String: BlockNode]>([:])
    /// For nodes defined inline inside another definition: the top-level node whose definition made them.
    private let definedBy = Mutex<[String: String]>([:])
    private let openingStack = Mutex<[String]>([])
    /// The images (by file identity) whose opens are nested now, outermost first: a backing chain being built.
    private let openingImages = Mutex<[String]>([])
    /// Most images one backing chain may hold.
    public static let maxChainDepth = 64
    private let anonymousCounter = Atomic<Int>(0)

    /// Creates an empty graph that can open the given drivers.
    public init(drivers: [String: DriverEntry]) {
        self.openers = drivers
    }

    /// Names of the drivers this graph can open.
    public var driverNames: [String] { openers.keys.sorted() }

    /// The node with that name.
    public func node(named name: String) -> BlockNode? {
        nodes.withLock { $0[name] }
    }

    /// Every node, by name.
    public var allNodes: [BlockNode] {
        nodes.withLock { Array($0.values) }.sorted { $0.name < $1.name }
    }

    /// Checks what can be checked of a definition without opening anything: the driver, the node-name
    /// and the top-level option names.
    public func check(_ value: OptionValue, context: String = "--blockdev") throws(OptionError) {
        let top = try OptionReader(value, context: context)
        let driverName = try top.requiredString("driver")
        guard let entry = openers[driverName] else {
            throw OptionError("\(context): unknown driver '\(driverName)' (known: \(driverNames.joined(separator: ", ")))")
        }
        let name = try top.string("node-name")
        if let name, !BlockGraph.isValidNodeName(name) {
            throw OptionError("\(context): invalid node-name '\(name)': use letters, digits, '-', '.', '_', starting with a letter")
        }
        if case .object(let members) = value,
           let unknown = members.keys.sorted().first(where: { !BlockGraph.commonKeys.contains($0) && !entry.keys.contains($0) }) {
            throw OptionError("\(context) '\(name ?? "?")' (driver \(driverName)): unknown parameter '\(unknown)'")
        }
    }

    /// Opens a node from `--blockdev` / `blockdev-add` options and adds it to the graph.
    @discardableResult
    public func open(
        _ value: OptionValue, context: String = "--blockdev", inheritReadOnly: Bool = false, syntax: OptionSyntax = .commandLine,
        prefix: String = ""
    ) throws(OptionError) -> BlockNode {
        let top = try OptionReader(value, context: context, prefix: prefix, syntax: syntax)
        let driverName = try top.requiredString("driver")
        guard let entry = openers[driverName] else {
            if syntax == .qmp { throw top.badValue("driver", driverName, expected: "a driver") }
            throw OptionError("\(context): unknown driver '\(driverName)' (known: \(driverNames.joined(separator: ", ")))")
        }
        let name: String
        if let given = try top.string("node-name") {
            guard BlockGraph.isValidNodeName(given) else {
                if syntax == .qmp {
                    throw OptionError(given.utf8.count >= 32 && BlockGraph.isValidNodeName(String(given.prefix(31)))
                        ? "Node name too long" : "Invalid node-name: '\(given)'")
                }
                throw OptionError("\(context): invalid node-name '\(given)': use letters, digits, '-', '.', '_', starting with a letter")
            }
            name = given
        } else {
            name = "#block\(anonymousCounter.wrappingAdd(1, ordering: .relaxed).newValue)"
        }
        guard node(named: name) == nil else { throw OptionError("\(context): node-name '\(name)' is already in use") }
        let options = try OptionReader(value, context: "\(context) '\(name)' (driver \(driverName))", prefix: prefix, syntax: syntax)
        if case .object(let members) = value,
           let unknown = members.keys.sorted().first(where: { !BlockGraph.commonKeys.contains($0) && !entry.keys.contains($0) }) {
            throw options.unexpected(unknown)
        }
        _ = options.value("driver")
        _ = options.value("node-name")
        let common = try BlockGraph.commonOptions(options, inheritReadOnly: inheritReadOnly)
        let parent = openingStack.withLock { stack -> String? in
            defer { stack.append(name) }
            return stack.first
        }
        defer { openingStack.withLock { _ = $0.popLast() } }
        let opened: OpenedDriver
        do {
            opened = try entry.open(options, OpenContext(graph: self, nodeName: name, common: common))
        } catch {
            if parent == nil { removeDefined(by: name) }
            throw error
        }
        do {
            try options.finish()
        } catch {
            opened.driver.close()
            if parent == nil { removeDefined(by: name) }
            throw error
        }
        let node = BlockNode(
            name: name, driver: opened.driver, children: opened.children, readOnly: common.readOnly, common: common, events: events)
        let inserted = nodes.withLock { table -> Bool in
            guard table[name] == nil else { return false }
            table[name] = node
            return true
        }
        guard inserted else {
            opened.driver.close()
            throw OptionError("\(context): node-name '\(name)' is already in use")
        }
        if let parent { definedBy.withLock { $0[name] = parent } }
        return node
    }

    /// Runs `body` (the open of a format node whose chain may lead to more images) with `image` marked
    /// as being opened; refuses an image that is already open further up the same chain (a backing
    /// file loop) and chains deeper than `maxChainDepth`.
    public func openingImage<T>(_ image: String, _ body: () throws(OptionError) -> T) throws(OptionError) -> T {
        let refusal = openingImages.withLock { stack -> String? in
            if stack.contains(image) { return "backing chain loop: '\(image)' is already part of this chain" }
            if stack.count >= BlockGraph.maxChainDepth { return "backing chain is deeper than \(BlockGraph.maxChainDepth) images" }
            stack.append(image)
            return nil
        }
        if let refusal { throw OptionError(refusal) }
        defer { openingImages.withLock { _ = $0.popLast() } }
        return try body()
    }

    /// Adds a node built elsewhere (a job's filter node) under its name; fails when the name is taken.
    public func insert(_ node: BlockNode) throws(OptionError) {
        let inserted = nodes.withLock { table -> Bool in
            guard table[node.name] == nil else { return false }
            table[node.name] = node
            return true
        }
        guard inserted else { throw OptionError("node-name '\(node.name)' is already in use") }
    }

    /// The nodes whose children include `node`.
    public func parents(of node: BlockNode) -> [BlockNode] {
        allNodes.filter { candidate in candidate.children.contains { $0.node === node } }
    }

    /// Removes a top-level node and the nodes defined inline inside it; fails when another node uses it.
    public func remove(_ name: String) throws(OptionError) {
        BlockGraph.closeParentsFirst(try detach(name))
    }

    /// Takes a top-level node and the nodes defined inline inside it out of the graph without closing
    /// them (the caller closes them once nothing uses them); fails when another node uses it.
    public func detach(_ name: String) throws(OptionError) -> [BlockNode] {
        guard let node = node(named: name) else { throw OptionError("no node named '\(name)'") }
        let inline = Set(definedBy.withLock { table in table.filter { $0.value == name }.map(\.key) })
        let users = parents(of: node).filter { !inline.contains($0.name) }
        if let user = users.first { throw OptionError("node '\(name)' is used by node '\(user.name)'") }
        let removed = detachDefined(by: name)
        nodes.withLock { _ = $0.removeValue(forKey: name) }
        return removed + [node]
    }

    private func removeDefined(by top: String) {
        BlockGraph.closeParentsFirst(detachDefined(by: top))
    }

    private func detachDefined(by top: String) -> [BlockNode] {
        let inline = definedBy.withLock { table -> [String] in
            let names = table.filter { $0.value == top }.map(\.key)
            for name in names { table.removeValue(forKey: name) }
            return names
        }
        return nodes.withLock { table in inline.compactMap { table.removeValue(forKey: $0) } }
    }

    /// Closes every node; used at shutdown.
    public func closeAll() {
        let all = nodes.withLock { table in
            defer { table.removeAll() }
            return Array(table.values)
        }
        BlockGraph.closeParentsFirst(all)
    }

    /// Closes nodes taken out of the graph, each before its children: a format node writes its last
    /// metadata (qcow2 tables, persistent bitmaps) through them.
    public static func closeParentsFirst(_ nodes: [BlockNode]) {
        var open = nodes
        while !open.isEmpty {
            let used = Set(open.flatMap { $0.children.map { ObjectIdentifier($0.node) } })
            let ready = open.filter { !used.contains(ObjectIdentifier($0)) }
            let batch = ready.isEmpty ? open : ready
            for node in batch { node.driver.close() }
            open.removeAll { node in batch.contains { $0 === node } }
        }
    }

    /// QEMU's rule for node names: a letter first, then letters, digits, '-', '.', '_'; at most 31 characters.
    public static func isValidNodeName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, first.properties.isAlphabetic, first.isASCII, name.utf8.count < 32 else {
            return false
        }
        return name.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "-._".unicodeScalars.contains($0)) }
    }

    private static func commonOptions(_ options: OptionReader, inheritReadOnly: Bool) throws(OptionError) -> CommonNodeOptions {
        var common = CommonNodeOptions()
        common.readOnly = try options.bool("read-only") ?? inheritReadOnly
        _ = try options.bool("auto-read-only")
        _ = try options.bool("force-share")
        if let cache = try options.object("cache") {
            common.cacheDirect = try cache.bool("direct") ?? false
            common.cacheNoFlush = try cache.bool("no-flush") ?? false
            try cache.finish()
        }
        common.discardUnmap = try options.choice("discard", ["ignore", "off", "unmap", "on"]).map { $0 == "unmap" || $0 == "on" } ?? false
        common.aio = try options.choice("aio", ["threads", "native", "io_uring"]) ?? "threads"
        if let detect = try options.choice("detect-zeroes", DetectZeroes.allCases.map(\.name)) {
            common.detectZeroes = DetectZeroes(name: detect)!
            if let problem = common.detectZeroes.problem(discardUnmap: common.discardUnmap) {
                throw options.failure(problem)
            }
        }
        return common
    }
}
