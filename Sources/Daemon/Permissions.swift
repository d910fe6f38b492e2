import BlockCore
import QAPI

/// What a user of a node needs of it or lets others do (QEMU's BLK_PERM_*).
struct BlockPermissions: OptionSet, Hashable {
    let rawValue: UInt8
    static let consistentRead = BlockPermissions(rawValue: 1 << 0)
    static let write = BlockPermissions(rawValue: 1 << 1)
    static let writeUnchanged = BlockPermissions(rawValue: 1 << 2)
    static let resize = BlockPermissions(rawValue: 1 << 3)
    static let all: BlockPermissions = [.consistentRead, .write, .writeUnchanged, .resize]

    /// The permissions as x-debug-query-block-graph lists them (QEMU lists the highest bit first).
    var qapi: [BlockPermission] {
        let named: [(BlockPermissions, BlockPermission)] = [
            (.resize, .resize), (.writeUnchanged, .writeUnchanged), (.write, .write), (.consistentRead, .consistentRead),
        ]
        return named.filter { contains($0.0) }.map(\.1)
    }

    /// The names QEMU's permission-conflict messages use.
    var names: String {
        let named: [(BlockPermissions, String)] = [
            (.consistentRead, "consistent read"), (.write, "write"), (.writeUnchanged, "write unchanged"), (.resize, "resize"),
        ]
        return named.filter { contains($0.0) }.map(\.1).joined(separator: ", ")
    }
}

/// One edge of the block graph with the permissions its parent takes and shares.
struct PermissionEdge {
    /// The parent node, or nil for a device (`backend`).
    var parent: BlockNode?
    /// The device, when the parent is one.
    var backend: BlockBackend?
    /// The device's name ("" for an export's anonymous device).
    var backendName: String = ""
    var child: BlockNode
    /// The child's role in QEMU's terms ("file", "backing", "image", "root" for a device).
    var role: String
    var perm: BlockPermissions
    var shared: BlockPermissions
}

extension Daemon {
    /// Every edge of the graph with its permissions, worked out as QEMU's default rules do
    /// (`bdrv_default_perms`): devices first, then each node's children from what the node's own
    /// users need. blockd's exports and devices share "resize": a node under an export may grow
    /// (see block_resize), where QEMU's NBD exports unshare it.
    func permissionEdges() -> [PermissionEdge] {
        var edges: [PermissionEdge] = []
        var seenBackends: [ObjectIdentifier] = []
        func addBackend(_ backend: BlockBackend, name: String, writable: Bool) {
            guard let medium = backend.medium, !seenBackends.contains(ObjectIdentifier(backend)) else { return }
            seenBackends.append(ObjectIdentifier(backend))
            var perm: BlockPermissions = .consistentRead
            if writable && !medium.readOnly { perm.insert(.write) }
            edges.append(PermissionEdge(parent: nil, backend: backend, backendName: name, child: medium, role: "root",
                                        perm: perm, shared: .all))
        }
        for (id, backend) in devices.sorted(by: { $0.key < $1.key }) {
            addBackend(backend, name: id, writable: !(backend.medium?.readOnly ?? true))
        }
        for export in server.exports.all {
            let writable = server.exports.all.contains { $0.backend === export.backend && $0.writable }
            addBackend(export.backend, name: export.backend.id ?? "", writable: writable)
        }
        // Parents before children: a node's permissions on its children follow from its own users.
        var cumulative: [ObjectIdentifier: (perm: BlockPermissions, shared: BlockPermissions)] = [:]
        for edge in edges {
            let key = ObjectIdentifier(edge.child)
            let old = cumulative[key] ?? ([], .all)
            cumulative[key] = (old.perm.union(edge.perm), old.shared.intersection(edge.shared))
        }
        for node in topologicalOrder() {
            let users = cumulative[ObjectIdentifier(node)] ?? ([], .all)
            for (role, child) in node.children {
                let (perm, shared) = childPermissions(role, of: node, users: users)
                edges.append(PermissionEdge(parent: node, child: child, role: Daemon.qemuRole(role, of: node),
                                            perm: perm, shared: shared))
                let key = ObjectIdentifier(child)
                let old = cumulative[key] ?? ([], .all)
                cumulative[key] = (old.perm.union(perm), old.shared.intersection(shared))
            }
        }
        return edges
    }

    /// Nodes ordered so that every parent comes before its children.
    private func topologicalOrder() -> [BlockNode] {
        let nodes = graph.allNodes
        var order: [BlockNode] = []
        var visited: Set<ObjectIdentifier> = []
        func visit(_ node: BlockNode) {
            guard visited.insert(ObjectIdentifier(node)).inserted else { return }
            for parent in nodes where parent.children.contains(where: { $0.node === node }) { visit(parent) }
            order.append(node)
        }
        for node in nodes { visit(node) }
        return order
    }

    /// What `parent` takes of and shares on its child in `role`, given what the parent's own users
    /// take and share.
    private func childPermissions(
        _ role: String, of parent: BlockNode, users: (perm: BlockPermissions, shared: BlockPermissions)
    ) -> (BlockPermissions, BlockPermissions) {
        var perm = users.perm
        var shared = users.shared
        switch childKind(role, of: parent) {
        case .filtered:
            break
        case .cow:
            perm = perm.intersection(.consistentRead)
            let passed: BlockPermissions = shared.contains(.write) ? [.write, .resize] : []
            shared = passed.union([.consistentRead, .writeUnchanged])
        case .dataAndMetadata, .data:
            if childKind(role, of: parent) == .dataAndMetadata {
                if !parent.readOnly { perm.formUnion([.write, .resize]) }
                perm.insert(.consistentRead)
                shared.subtract([.write, .resize])
            }
            shared.remove(.resize)
            if perm.contains(.writeUnchanged) { perm.insert(.write) }
            if perm.contains(.write) { perm.insert(.resize) }
        case .quorum:
            shared = shared.intersection([.consistentRead, .writeUnchanged])
        }
        if parent.driver.driverName == "raw" {
            // raw takes write and resize only when its users do.
            perm.subtract([.write, .resize])
            perm.formUnion(users.perm.intersection([.write, .resize]))
        }
        return (perm, shared)
    }

    /// QEMU's refusal when a new user needing `needed` meets an edge into `node` that does not share
    /// it, or nil when nothing stands in the way.
    func permissionConflict(on node: BlockNode, needing needed: BlockPermissions) -> QAPIError? {
        for edge in permissionEdges() where edge.child === node && !edge.shared.isSuperset(of: needed) {
            let missing = needed.subtracting(edge.shared)
            let holder: String
            if let parent = edge.parent {
                holder = "node '\(parent.name)' (uses node '\(node.name)' as '\(edge.role)' child)"
            } else if edge.backendName.isEmpty {
                holder = "an unnamed block device (uses node '\(node.name)' as 'root' child)"
            } else {
                holder = "block device '\(edge.backendName)' (uses node '\(node.name)' as 'root' child)"
            }
            return .generic("Permission conflict on node '\(node.name)': permissions '\(missing.names)' are both required by "
                + "an unnamed block device (uses node '\(node.name)' as 'root' child) and unshared by \(holder).")
        }
        return nil
    }
}

extension ChildKind: Equatable {}
