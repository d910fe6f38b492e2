import BlockCore
import BlockDrivers

/// Images for the qcow2 harnesses: the fuzzed image is written beside two backing files its header
/// may name (`base.raw`, `base.qcow2`) and opened from there.
public enum FuzzImages {
    /// The backing files, written once.
    static let backingFiles: Void = {
        FuzzScratch.write((0..<(64 * 1024)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }, to: "base.raw")
        var options = Qcow2CreateOptions(size: 1 << 20)
        options.clusterSize = 4096
        guard let layout = try? Qcow2Create.layout(options) else { fatalError("cannot lay out base.qcow2") }
        var image = [UInt8](repeating: 0, count: Int(layout.fileLength))
        for region in layout.regions {
            image.replaceSubrange(Int(region.offset)..<Int(region.offset) + region.bytes.count, with: region.bytes)
        }
        FuzzScratch.write(image, to: "base.qcow2")
    }()

    /// Writes `bytes` as `img.qcow2` and opens a graph with it as the writable file node `file0`;
    /// nil when the header names a backing file through a path (a '/' could reach any host file).
    public static func open(_ bytes: [UInt8]) -> (graph: BlockGraph, file: BlockNode)? {
        guard backingNameStaysBeside(bytes) else { return nil }
        _ = backingFiles
        let path = FuzzScratch.write(bytes, to: "img.qcow2")
        let graph = BlockGraph(drivers: Drivers.all)
        guard let file = try? graph.open(.object([
            "driver": .string("file"), "node-name": .string("file0"), "filename": .string(path),
        ])) else { return nil }
        return (graph, file)
    }

    /// False when the header's backing file name contains a '/'.
    static func backingNameStaysBeside(_ bytes: [UInt8]) -> Bool {
        guard bytes.count >= 20 else { return true }
        let offset = bytes[8..<16].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let length = bytes[16..<20].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        guard offset < UInt64(bytes.count) else { return true }
        let end = Int(min(UInt64(bytes.count), offset + min(length, 4096)))
        return !bytes[Int(offset)..<end].contains(UInt8(ascii: "/"))
    }
}
