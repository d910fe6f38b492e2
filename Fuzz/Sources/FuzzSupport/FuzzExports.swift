import BlockCore
import BlockDrivers
import Exports

/// The exports the NBD harnesses serve: every kind of medium the transmission phase treats differently.
public enum FuzzExports {
    /// Names clients can ask for, in the order of `table.all`.
    public static let names = ["disk0", "ro", "file", "empty"]

    /// `disk0`: null-co, 1 MiB, writable and resizable. `ro`: the same device, read-only.
    /// `file`: a 1 MiB file (mapped reads, real writes), writable. `empty`: a device with no medium.
    public static let table: ExportTable = {
        let table = ExportTable()
        let path = FuzzScratch.write([UInt8](repeating: 0x5a, count: 1 << 20), to: "export.raw")
        do {
            let file = BlockNode(
                name: "f0", driver: try FileDriver(driverName: "file", path: path, common: CommonNodeOptions()), readOnly: false)
            try table.add(NBDExport(
                id: "e0", name: "disk0", description: "null device", backend: BlockBackend(id: nil, medium: null), writable: true,
                resizable: true))
            try table.add(NBDExport(id: "e1", name: "ro", description: nil, backend: BlockBackend(id: nil, medium: null), writable: false))
            try table.add(NBDExport(id: "e2", name: "file", description: "a file", backend: BlockBackend(id: nil, medium: file), writable: true))
            try table.add(NBDExport(id: "e3", name: "empty", description: nil, backend: BlockBackend(id: nil, medium: nil), writable: false))
        } catch {
            fatalError("fuzz exports: \(error)")
        }
        return table
    }()

    /// The null device behind `disk0` and `ro`.
    static let null = BlockNode(
        name: "n0", driver: NullDriver(driverName: "null-co", length: 1 << 20, latencyNanoseconds: 0, readZeroes: true),
        readOnly: false)

    /// Undoes what an input may have changed (`NBD_CMD_RESIZE`), so that every input starts alike.
    public static func reset() {
        _ = table
        if null.length != 1 << 20 { try? null.resize(to: 1 << 20) }
    }
}
