import BlockCore
import LogOptionsClock

/// Opens `parallels` nodes: reads and checks the header and BAT; refuses read-write use of an image
/// that was not closed cleanly (as QEMU does: `blockimg check -r all` repairs it).
public enum ParallelsOpener {
    /// Opens a parallels node.
    public static let opener: DriverOpener = { options, context throws(OptionError) in
        guard let file = try context.child("file", of: options) else { throw options.missing("file") }
        let readOnly = context.common.readOnly
        try context.requireWritable([file], of: options)
        let name = file.driver.filename
        let header: ParallelsHeader
        let bat: [UInt32]
        do throws(BlockError) {
            header = try ParallelsHeader.read(file)
            bat = try header.readBAT(file)
        } catch {
            throw options.failure("'\(name)': \(error.message)")
        }
        if header.inUse == ParallelsHeader.inUseMagic && !readOnly {
            throw options.failure("parallels: Image was not closed correctly; cannot be opened read/write")
        }
        let driver = ParallelsDriver(file: file, header: header, bat: bat, readOnly: readOnly)
        if !readOnly {
            do throws(BlockError) {
                try driver.setInUse(ParallelsHeader.inUseMagic)
            } catch {
                throw options.failure("'\(name)': could not mark the image in use: \(error.message)")
            }
        }
        return OpenedDriver(driver: driver, children: [("file", file)])
    }
}
