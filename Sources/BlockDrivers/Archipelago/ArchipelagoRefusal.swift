import BlockCore
import LogOptionsClock

/// The `archipelago` driver of the schema: its client library no longer exists and QEMU removed
/// the driver in 3.0, so every open is refused with a message that says so.
enum ArchipelagoRefusal {
    /// Refuses `archipelago` nodes.
    static let opener: DriverOpener = { options, _ throws(OptionError) in
        throw options.failure(
            "the archipelago driver is not supported: its client library (libxseg) no longer exists "
                + "and QEMU removed the driver in 3.0")
    }
}
