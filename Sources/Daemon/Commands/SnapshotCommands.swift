import BlockCore
import LogOptionsClock
import Jobs
import JSON
import QAPI

extension Daemon {
    /// `blockdev-snapshot-sync`, `blockdev-snapshot`, `change-backing-file`.
    func registerSnapshotCommands(on table: QMPCommandTable) {
        table.register(BlockdevSnapshotSyncCommand.self) { [unowned self] arguments throws(QAPIError) in try blockdevSnapshotSync(arguments) }
        table.register(BlockdevSnapshotCommand.self) { [unowned self] arguments throws(QAPIError) in try blockdevSnapshot(arguments) }
        table.register(ChangeBackingFileCommand.self) { [unowned self] arguments throws(QAPIError) in try changeBackingFile(arguments) }
    }

    /// A prepared graph change of a `transaction` action: `commit` makes it, `abort` undoes the preparation.
    struct PreparedAction {
        var commit: () -> Void
        var abort: () -> Void
    }

    /// `blockdev-snapshot-sync`: creates a qcow2 overlay whose backing file is the node's image and
    /// makes it the active layer: every device showing the node shows the overlay from then on.
    func blockdevSnapshotSync(_ arguments: BlockdevSnapshotSync) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            try prepareSnapshotSync(arguments).commit()
            return QAPIEmpty()
        }
    }

    /// Checks a blockdev-snapshot-sync, creates and opens the overlay; the switch is the commit.
    func prepareSnapshotSync(_ arguments: BlockdevSnapshotSync) throws(QAPIError) -> PreparedAction {
        let node = try snapshotNode(device: arguments.device, nodeName: arguments.nodeName)
        try checkActiveLayer(node)
        let format = arguments.format ?? "qcow2"
        guard format == "qcow2" else { throw .generic("Format '\(format)' does not support backing files") }
        if let name = arguments.snapshotNodeName, graph.node(named: name) != nil {
            throw .generic("Node name '\(name)' is already in use")
        }
        let image = imageFile(of: node)
        if arguments.mode != .existing {
            guard arguments.snapshotFile != image else {
                throw .generic("Error: Trying to create an image with the same filename as the backing file")
            }
            try createJobImage(arguments.snapshotFile, format: "qcow2", size: node.length, backing: (image, imageFormat(of: node)))
        }
        let overlay = try openJobImage(arguments.snapshotFile, format: "qcow2", nodeName: arguments.snapshotNodeName, backing: node.name)
        return PreparedAction(
            commit: { [self] in
                nodeDefinitions[overlay.name] = NodeDefinition(options: .object([
                    "driver": .string("qcow2"), "node-name": .string(overlay.name),
                    "file": .object(["driver": .string("file"), "filename": .string(arguments.snapshotFile)]),
                    "backing": .string(node.name),
                ]), ownedByMonitor: false)
                makeActive(overlay, above: node)
            },
            abort: { [self] in try? graph.remove(overlay.name) })
    }

    /// `blockdev-snapshot`: a qcow2 node added with `backing: null` becomes the active layer above `node`.
    func blockdevSnapshot(_ arguments: BlockdevSnapshot) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            try prepareSnapshot(arguments).commit()
            return QAPIEmpty()
        }
    }

    /// Checks a blockdev-snapshot and links the overlay to the node; the switch is the commit.
    func prepareSnapshot(_ arguments: BlockdevSnapshot) throws(QAPIError) -> PreparedAction {
        let node = try jobNode(arguments.node)
        let overlay = try jobNode(arguments.overlay)
        try checkActiveLayer(node)
        guard let chain = overlay.driver as? any BackingChain else {
            throw .generic("The overlay does not support backing images")
        }
        guard chain.backingNode == nil else { throw .generic("The overlay already has a backing image") }
        if !graph.parents(of: overlay).isEmpty || allBackendsLocked().contains(where: { $0.medium === overlay }) {
            throw .generic("The overlay is already in use")
        }
        guard !overlay.readOnly else { throw .generic("The overlay is read-only") }
        do throws(BlockError) {
            try chain.writeBackingName(imageFile(of: node), format: imageFormat(of: node))
        } catch {
            throw .generic("Could not update backing file link: \(error.message)")
        }
        chain.setBackingNode(node)
        overlay.setChild("backing", to: node)
        return PreparedAction(
            commit: { [self] in makeActive(overlay, above: node) },
            abort: {
                chain.setBackingNode(nil)
                overlay.setChild("backing", to: nil)
                try? chain.writeBackingName(nil, format: nil)
            })
    }

    /// `change-backing-file`: rewrites the backing file name in the header of an image of a
    /// device's chain, without changing what is read.
    func changeBackingFile(_ arguments: ChangeBackingFileArguments) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            let top = try jobNode(arguments.device)
            guard let image = graph.node(named: arguments.imageNodeName) else {
                throw .generic("Cannot find device='' nor node-name='\(arguments.imageNodeName)'")
            }
            var chainMember = false
            var current: BlockNode? = top
            while let node = current {
                if node === image { chainMember = true }
                current = (node.driver as? any BackingChain)?.backingNode
            }
            guard chainMember else {
                throw .generic("Node '\(arguments.imageNodeName)' not found in chain of device '\(arguments.device)'")
            }
            guard let chain = image.driver as? any BackingChain else {
                throw .generic("Image '\(arguments.imageNodeName)' does not support backing files")
            }
            guard !image.readOnly else { throw .generic("Image '\(arguments.imageNodeName)' is read-only") }
            let format = chain.backingNode.map(imageFormat(of:))
            do throws(BlockError) {
                try chain.writeBackingName(arguments.backingFile.isEmpty ? nil : arguments.backingFile, format: format)
            } catch {
                throw .generic("Could not change backing file to '\(arguments.backingFile)': \(error.message)")
            }
            return QAPIEmpty()
        }
    }

    /// The node a snapshot command names with `device` or `node-name`, in QEMU's wording.
    func snapshotNode(device: String?, nodeName: String?) throws(QAPIError) -> BlockNode {
        if let device {
            if let medium = devices[device]?.medium ?? server.exports.export(id: device)?.backend.medium { return medium }
            throw .generic("Cannot find device='\(device)' nor node-name='\(nodeName ?? "")'")
        }
        if let nodeName, let node = graph.node(named: nodeName) { return node }
        throw .generic("Cannot find device='' nor node-name='\(nodeName ?? "")'")
    }

    /// Refuses a node that is not the top of its chain, or that a job is using.
    private func checkActiveLayer(_ node: BlockNode) throws(QAPIError) {
        if let parent = graph.parents(of: node).first {
            throw .generic("Node '\(node.name)' is busy: node is used as backing hd of '\(parent.name)'")
        }
        try checkNotBusy([node])
    }

    /// Moves every device showing `node` onto `overlay`; writes in flight to the old node are
    /// repeated on the overlay for a moment.
    private func makeActive(_ overlay: BlockNode, above node: BlockNode) {
        for backend in allBackendsLocked() { _ = backend.replaceMedium(node, with: overlay) }
        ForwardWrites.forAMoment(from: node, to: overlay)
        Log.info("node '\(overlay.name)' is the active layer above '\(node.name)'")
    }

    /// The image file behind a format node (its `file` child's file name).
    func imageFile(of node: BlockNode) -> String {
        node.children.first { $0.role == "file" }?.node.driver.filename ?? node.driver.filename
    }

    /// Every device, for a caller that holds the control lock.
    func allBackendsLocked() -> [BlockBackend] {
        Array(devices.values) + server.exports.all.map(\.backend)
    }
}
