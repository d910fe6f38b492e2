import BlockCore

/// The node a mirror shows above its source while it runs (QEMU's `mirror_top`), named by
/// `filter-node-name`: a filter that passes every request to the source, whose writes the
/// mirror's hook sees.
public final class MirrorTopDriver: FilterDriver {
    public let driverName = "mirror_top"
    public let features: DriverFeatures
    public let child: BlockNode

    /// A filter over the mirror's `source`.
    public init(source: BlockNode) {
        self.child = source
        self.features = source.features.inheritedByFilter
    }

    /// The filter node named `name` over `source`, its child in the `backing` role as QEMU's.
    public static func node(named name: String, over source: BlockNode) -> BlockNode {
        BlockNode(name: name, driver: MirrorTopDriver(source: source), children: [("backing", source)], readOnly: source.readOnly)
    }
}
