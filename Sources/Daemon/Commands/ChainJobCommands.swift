import BlockCore
import LogOptionsClock
import Dispatch
import Jobs
import JSON
import QAPI

extension Daemon {
    /// `block-stream`, `block-commit`.
    func registerChainJobCommands(on table: QMPCommandTable) {
        table.register(BlockStreamCommand.self) { [unowned self] arguments throws(QAPIError) in try blockStream(arguments) }
        table.register(BlockCommitCommand.self) { [unowned self] arguments throws(QAPIError) in try blockCommit(arguments) }
    }

    /// The images of a node's backing chain, the node first.
    func backingChain(of node: BlockNode) -> [BlockNode] {
        var chain: [BlockNode] = []
        var current: BlockNode? = node
        while let image = current, chain.count <= BlockGraph.maxChainDepth {
            chain.append(image)
            current = (image.driver as? any BackingChain)?.backingNode
        }
        return chain
    }

    /// The index in `chain` of the image a `base`/`top` argument names (its file name or node name).
    private func chainIndex(_ name: String, in chain: [BlockNode]) -> Int? {
        chain.firstIndex { imageFile(of: $0) == name || $0.name == name }
    }

    /// `block-stream`.
    func blockStream(_ arguments: BlockStreamArguments) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            let start = JobStart(
                id: arguments.jobId, device: arguments.device, speed: arguments.speed, autoFinalize: arguments.autoFinalize,
                autoDismiss: arguments.autoDismiss)
            let top = try jobNode(arguments.device)
            let id = try checkJobStart(start)
            let chain = backingChain(of: top)
            var baseIndex = chain.count
            if let base = arguments.base {
                guard let index = chainIndex(base, in: chain), index > 0 else {
                    throw .generic("Can't find '\(base)' in the backing chain")
                }
                baseIndex = index
            }
            try checkNotBusy(Array(chain[0..<min(baseIndex, chain.count)]))
            guard !top.readOnly else { throw .generic("Block node is read-only") }
            let base = baseIndex < chain.count ? chain[baseIndex] : nil
            let driver = StreamJob(
                top: top, base: base, baseDepth: baseIndex,
                backingFile: arguments.backingFile ?? base.map(imageFile(of:)), backingFormat: base.map(imageFormat(of:)),
                onError: Daemon.policy(arguments.onError), dropped: { [weak self] nodes in self?.dropImages(nodes) })
            guard driver.attach() else {
                throw .generic("Node '\(top.name)' is busy: block device is in use by a block job")
            }
            _ = try startJob(id: id, driver: driver, start: start)
            return QAPIEmpty()
        }
    }

    /// `block-commit`: an active commit (top is the active image) is a mirror onto the base that
    /// becomes ready and pivots on complete; otherwise a commit job that relinks the image above.
    func blockCommit(_ arguments: BlockCommitArguments) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            let start = JobStart(
                id: arguments.jobId, device: arguments.device, speed: arguments.speed, autoFinalize: arguments.autoFinalize,
                autoDismiss: arguments.autoDismiss)
            let active: BlockNode
            if let medium = devices[arguments.device]?.medium {
                active = medium
            } else if let node = graph.node(named: arguments.device) {
                active = node
            } else {
                throw .deviceNotFound(arguments.device)
            }
            let chain = backingChain(of: active)
            var topIndex = 0
            if let top = arguments.topNode ?? arguments.top {
                guard let index = chainIndex(top, in: chain) else { throw .generic("Top image file \(top) not found") }
                topIndex = index
            }
            var baseIndex = chain.count - 1
            if let base = arguments.baseNode ?? arguments.base {
                guard let index = chainIndex(base, in: Array(chain.dropFirst(topIndex + 1))) else {
                    throw .generic("Can't find '\(base)' in the backing chain")
                }
                baseIndex = index + topIndex + 1
            }
            guard baseIndex != topIndex else { throw .generic("cannot commit an image into itself") }
            guard baseIndex > topIndex else {
                throw .generic("'\(imageFile(of: chain[baseIndex]))' is not in the backing chain of '\(imageFile(of: chain[topIndex]))'")
            }
            if topIndex == 0, arguments.backingFile != nil {
                throw .generic("'backing-file' specified, but 'top' is the active layer")
            }
            let id = try checkJobStart(start)
            // A job on the active image sits above it in QEMU's graph (a filter node).
            if active.hasWriteHook { throw .generic("Need a root block node") }
            try checkNotBusy(Array(chain[0...baseIndex]))
            let oldBase = chain[baseIndex]
            let base = try writableImage(oldBase)
            let dropped: @Sendable ([BlockNode]) -> Void = { [weak self] nodes in
                self?.dropImages(nodes + (base === oldBase ? [] : [oldBase]))
            }
            do throws(QAPIError) {
                if topIndex == 0 {
                    try startActiveCommit(
                        id: id, start: start, active: active, base: base, baseDepth: baseIndex,
                        onError: Daemon.policy(arguments.onError), dropped: dropped)
                } else {
                    let driver = CommitJob(
                        top: chain[topIndex], base: base, above: chain[topIndex - 1], baseDepth: baseIndex - topIndex,
                        backingFile: arguments.backingFile ?? imageFile(of: oldBase), backingFormat: imageFormat(of: oldBase),
                        onError: Daemon.policy(arguments.onError), dropped: dropped)
                    _ = try startJob(id: id, driver: driver, start: start)
                }
            } catch {
                if base !== oldBase { try? graph.remove(base.name) }
                throw error
            }
            return QAPIEmpty()
        }
    }

    private func startActiveCommit(
        id: String, start: JobStart, active: BlockNode, base: BlockNode, baseDepth: Int, onError: JobErrorPolicy,
        dropped: @escaping @Sendable ([BlockNode]) -> Void
    ) throws(QAPIError) {
        guard graph.parents(of: active).isEmpty else { throw .generic("Need a root block node") }
        if base.length < active.length {
            do throws(BlockError) {
                try base.resize(to: active.length)
            } catch {
                throw .generic("Could not resize base: \(error.message)")
            }
        }
        let removed = Array(backingChain(of: active).prefix(baseDepth))
        let driver = MirrorJob(
            kind: .commit, source: active, target: base, sync: .full, onSourceError: onError, onTargetError: onError, devices: { [weak self] in self?.allBackends() ?? [] },
            initialDirty: { (dirty) throws(BlockError) in
                var position: UInt64 = 0
                while position < active.length {
                    let extents = try active.blockStatus(at: position, length: active.length - position)
                    guard let first = extents.first, first.length > 0 else { break }
                    if let depth = first.depth, depth < baseDepth { dirty.set(position, first.length) }
                    position += first.length
                }
            },
            afterPivot: { dropped(removed) })
        guard driver.attach() else {
            throw .generic("Node '\(active.name)' is busy: block device is in use by a block job")
        }
        _ = try startJob(id: id, driver: driver, start: start)
    }

    /// The node to write a commit's data into: `node` when it is writable, else a writable node
    /// opened on the same image (with the same backing node), which replaces it at the end.
    private func writableImage(_ node: BlockNode) throws(QAPIError) -> BlockNode {
        guard node.readOnly else { return node }
        let format = imageFormat(of: node)
        var options: [String: JSONValue] = [
            "driver": .string(format), "read-only": .bool(false),
            "file": .object(["driver": .string("file"), "filename": .string(imageFile(of: node))]),
        ]
        if format == "qcow2" {
            options["backing"] = (node.driver as? any BackingChain)?.backingNode.map { JSONValue.string($0.name) } ?? JSONValue.null
        }
        do throws(OptionError) {
            return try graph.open(.object(options), context: "block-commit base", syntax: .qmp)
        } catch {
            throw .generic("Could not reopen '\(imageFile(of: node))' read-write: \(error.message)")
        }
    }

    /// Takes images a stream or commit dropped from a chain out of the graph (those the monitor
    /// did not create) and closes them a moment later, once requests that were reading them are done.
    func dropImages(_ nodes: [BlockNode]) {
        let detached = controlLock.withLock { _ -> [BlockNode] in
            var detached: [BlockNode] = []
            for node in nodes where nodeDefinitions[node.name]?.ownedByMonitor != true {
                guard graph.parents(of: node).isEmpty, !allBackendsLocked().contains(where: { $0.medium === node }) else { continue }
                if let taken = try? graph.detach(node.name) {
                    detached += taken
                    nodeDefinitions.removeValue(forKey: node.name)
                }
            }
            return detached
        }
        guard !detached.isEmpty else { return }
        let closing = detached
        DispatchQueue.global().asyncAfter(deadline: .now() + 2) {
            for node in closing { node.driver.close() }
        }
    }
}
