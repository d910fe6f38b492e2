import BlockCore
import QAPI

extension Daemon {
    /// `x-debug-query-block-graph`.
    func registerGraphCommands(on table: QMPCommandTable) {
        table.register(XDebugQueryBlockGraphCommand.self) { [unowned self] _ throws(QAPIError) in try self.xDebugQueryBlockGraph() }
    }

    /// `x-debug-query-block-graph`: describes the block graph for debugging.
    func xDebugQueryBlockGraph() throws(QAPIError) -> XDbgBlockGraph {
        try locked { () throws(QAPIError) in blockGraph() }
    }

    /// The graph as x-debug-query-block-graph shows it: devices and nodes as numbered vertices,
    /// edges with the permissions each parent takes and shares (Permissions.swift).
    func blockGraph() -> XDbgBlockGraph {
        let edges = permissionEdges()
        var vertices: [XDbgBlockGraphNode] = []
        var backendIDs: [ObjectIdentifier: UInt64] = [:]
        var nodeIDs: [ObjectIdentifier: UInt64] = [:]
        for edge in edges {
            guard let backend = edge.backend, backendIDs[ObjectIdentifier(backend)] == nil else { continue }
            let id = UInt64(vertices.count + 1)
            backendIDs[ObjectIdentifier(backend)] = id
            vertices.append(XDbgBlockGraphNode(id: id, type: .blockBackend, name: edge.backendName))
        }
        for node in graph.allNodes {
            let id = UInt64(vertices.count + 1)
            nodeIDs[ObjectIdentifier(node)] = id
            vertices.append(XDbgBlockGraphNode(id: id, type: .blockDriver, name: node.name))
        }
        let described: [XDbgBlockGraphEdge] = edges.compactMap { edge in
            let parent = edge.backend.flatMap { backendIDs[ObjectIdentifier($0)] } ?? edge.parent.flatMap { nodeIDs[ObjectIdentifier($0)] }
            guard let parent, let child = nodeIDs[ObjectIdentifier(edge.child)] else { return nil }
            return XDbgBlockGraphEdge(parent: parent, child: child, name: edge.role, perm: edge.perm.qapi, sharedPerm: edge.shared.qapi)
        }
        return XDbgBlockGraph(nodes: vertices, edges: described)
    }
}
