import BlockCore
import BlockDrivers
import JSON
import LogOptionsClock

/// How a top-level node was defined: the options it was opened with, and whether the monitor owns
/// it (QEMU's "monitor-owned" nodes, the ones `--blockdev` and `blockdev-add` created, are the only
/// ones `blockdev-del` removes).
struct NodeDefinition {
    /// The options as given (command-line values are strings, QMP values typed).
    var options: OptionValue
    /// Whether `blockdev-del` may remove the node.
    var ownedByMonitor: Bool
}

/// What a child is for its parent, in QEMU's terms: it decides the permissions the parent takes
/// (`x-debug-query-block-graph`, `block_resize`) and the chain `backing_file_depth` follows.
enum ChildKind {
    /// A filter's only child, or a format's child that holds the data as it is (raw without a window).
    case filtered
    /// A backing file.
    case cow
    /// A file that holds the data and the format's metadata (qcow2's file).
    case dataAndMetadata
    /// A file that holds the data only (raw with a window, blkverify's test image).
    case data
    /// A quorum child.
    case quorum
}

extension Daemon {
    /// The name QEMU gives a child: blockd's drivers call every primary child "file", where
    /// blkdebug calls it "image" and blkverify "raw".
    static func qemuRole(_ role: String, of parent: BlockNode) -> String {
        switch (parent.driver.driverName, role) {
        case ("blkdebug", "file"): return "image"
        case ("blkverify", "file"): return "raw"
        default: return role
        }
    }

    /// What `child` (in `role`) is for `parent`.
    func childKind(_ role: String, of parent: BlockNode) -> ChildKind {
        switch (parent.driver.driverName, role) {
        case ("qcow2", "backing"): return .cow
        case ("qcow2", _): return .dataAndMetadata
        case ("raw", _):
            let options = definition(of: parent)
            return options["offset"] != nil || options["size"] != nil ? .data : .filtered
        case ("blkverify", "test"): return .data
        case ("quorum", _): return .quorum
        default: return .filtered
        }
    }

    /// The child QEMU follows from a node to describe its chain (`backing_file_depth`,
    /// `backing-image`): a qcow2 image's backing file, a filter's child.
    func filteredOrBackingChild(of node: BlockNode) -> BlockNode? {
        switch node.driver.driverName {
        case "qcow2", "mirror_top": return node.children.first { $0.role == "backing" }?.node
        case "throttle", "blkdebug", "blkverify": return node.children.first { $0.role == "file" }?.node
        default: return nil
        }
    }

    /// The options a node was defined with: its own top-level definition, the inline definition
    /// inside a parent's, or, for a backing file a qcow2 image opened from its header, the options
    /// QEMU would have opened it with.
    func definition(of node: BlockNode) -> [String: OptionValue] {
        if let own = nodeDefinitions[node.name], case .object(let members) = own.options { return members }
        for parent in graph.parents(of: node) {
            guard let role = parent.children.first(where: { $0.node === node })?.role else { continue }
            let options = definition(of: parent)
            if role.hasPrefix("children."), let index = Int(role.dropFirst("children.".count)),
               case .array(let list)? = options["children"], index < list.count, case .object(let inline) = list[index] {
                return inline
            }
            if case .object(let inline)? = options[Daemon.qemuRole(role, of: parent)] { return inline }
        }
        // A backing file opened from the image header: a format over a file.
        var implicit: [String: OptionValue] = ["driver": .string(node.driver.driverName)]
        if let file = node.children.first(where: { $0.role == "file" })?.node {
            implicit["file"] = .object(["driver": .string(file.driver.driverName), "filename": .string(file.driver.filename)])
        } else if node.children.isEmpty {
            implicit["filename"] = .string(node.driver.filename)
        }
        return implicit
    }

    /// Records a node a monitor command or the command line opened at the top.
    func recordDefinition(of node: BlockNode, _ options: OptionValue, ownedByMonitor: Bool) {
        nodeDefinitions[node.name] = NodeDefinition(options: options, ownedByMonitor: ownedByMonitor)
    }

    /// Whether `blockdev-del` may remove the node: `--blockdev` and `blockdev-add` created it at the top.
    func isOwnedByMonitor(_ node: BlockNode) -> Bool {
        nodeDefinitions[node.name]?.ownedByMonitor ?? false
    }
}
