import BlockCore
import LogOptionsClock

/// Opens `qcow` (version 1) nodes: reads and checks the header and L1 table, and opens the backing file.
public enum QcowOpener {
    /// The largest L1 table this driver loads.
    static let maxL1Bytes: UInt64 = 256 << 20

    /// Opens a qcow node.
    public static let opener: DriverOpener = { options, context throws(OptionError) in
        guard let file = try context.child("file", of: options) else { throw options.missing("file") }
        return try context.graph.openingImage(Qcow2Opener.fileIdentity(file)) { () throws(OptionError) in
            try open(options, context: context, file: file)
        }
    }

    private static func open(_ options: OptionReader, context: OpenContext, file: BlockNode) throws(OptionError) -> OpenedDriver {
        let readOnly = context.common.readOnly
        try context.requireWritable([file], of: options)
        let name = file.driver.filename
        let header: QcowHeader
        let l1: [UInt64]
        do throws(BlockError) {
            header = try QcowHeader.read(file)
            guard header.l1Entries * 8 <= maxL1Bytes else { throw .invalid("Image too large") }
            l1 = Qcow2Bytes.words(try ImageBacking.readBytes(
                file, at: header.l1TableOffset, count: Int(header.l1Entries * 8), what: "the qcow L1 table"))
        } catch {
            throw options.failure("'\(name)': \(error.message)")
        }
        let backing = try ImageBacking.open(options, context: context, storedName: header.backingFile, storedFormat: nil, file: file)
        let driver = QcowDriver(file: file, backing: backing, header: header, l1: l1, readOnly: readOnly)
        var children: [(role: String, node: BlockNode)] = [("file", file)]
        if let backing { children.append(("backing", backing)) }
        return OpenedDriver(driver: driver, children: children)
    }
}
