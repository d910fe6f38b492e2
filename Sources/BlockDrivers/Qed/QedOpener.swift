import BlockCore
import LogOptionsClock

/// Opens `qed` nodes: reads and checks the header and L1 table, checks an image that was not closed
/// cleanly (when opened read-write), and opens the backing file.
public enum QedOpener {
    /// The largest L1 or L2 table this driver loads.
    static let maxTableBytes = 256 << 20

    /// Opens a qed node.
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
        var header: QedHeader
        let l1: [UInt64]
        do throws(BlockError) {
            header = try QedHeader.read(file)
            guard header.tableBytes <= maxTableBytes else {
                throw .invalid("qed: tables of \(header.tableBytes) bytes are larger than this driver loads")
            }
            if !readOnly && header.needsCheck {
                // Left open by a crash: the metadata may be inconsistent; repair it before use.
                let report = try QedCheck.run(file: file, repair: .all)
                guard report.corruptions == 0 else {
                    throw .io("qed: the image is corrupt (\(report.corruptions) errors the check could not fix)")
                }
                Log.info("qed '\(name)': checked after an unclean shutdown (\(report.corruptionsFixed) errors fixed, \(report.leaks) leaked clusters)")
                header = try QedHeader.read(file)
            }
            if !readOnly && header.autoclearFeatures != 0 {
                header.autoclearFeatures = 0
                try header.serialized().withBytes { (raw) throws(BlockError) in try file.write(raw, at: 0, fua: false) }
                try file.flush()
            }
            l1 = LittleEndian.words(try ImageBacking.readBytes(file, at: header.l1TableOffset, count: header.tableBytes, what: "the qed L1 table"))
        } catch {
            throw options.failure("'\(name)': \(error.message)")
        }
        let backing = try ImageBacking.open(
            options, context: context, storedName: header.backingFile, storedFormat: header.backingFormat, file: file)
        let driver = QedDriver(file: file, backing: backing, header: header, l1: l1, readOnly: readOnly)
        if !readOnly {
            do throws(BlockError) {
                try driver.setNeedCheck(true)
            } catch {
                throw options.failure("'\(name)': could not mark the image in use: \(error.message)")
            }
        }
        var children: [(role: String, node: BlockNode)] = [("file", file)]
        if let backing { children.append(("backing", backing)) }
        return OpenedDriver(driver: driver, children: children)
    }
}
