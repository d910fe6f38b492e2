import BlockCore
import QAPI

/// Every driver this build can open, by the name `--blockdev driver=` uses.
public enum Drivers {
    /// The table a `BlockGraph` is created with. Each driver's own option names are its branch of
    /// the schema's `BlockdevOptions` union, so that they are known in one place.
    public static let all: [String: DriverEntry] = [
        "file": entry("file", FileDriverOpener.opener(for: "file")),
        "host_device": entry("host_device", FileDriverOpener.opener(for: "host_device")),
        "host_cdrom": entry("host_cdrom", FileDriverOpener.opener(for: "host_cdrom")),
        "raw": entry("raw", RawDriver.opener),
        "qcow2": entry("qcow2", Qcow2Opener.opener),
        "qed": entry("qed", QedOpener.opener),
        "qcow": entry("qcow", QcowOpener.opener),
        "parallels": entry("parallels", ParallelsOpener.opener),
        "vdi": entry("vdi", VdiDriver.opener),
        "vpc": entry("vpc", VpcDriver.opener),
        "vhdx": entry("vhdx", VhdxDriver.opener),
        "vmdk": entry("vmdk", VmdkOpener.opener),
        "blkdebug": entry("blkdebug", BlkdebugDriver.opener),
        "blkverify": entry("blkverify", BlkverifyDriver.opener),
        "quorum": entry("quorum", QuorumDriver.opener),
        "throttle": entry("throttle", ThrottleDriver.opener),
        "null-co": entry("null-co", NullDriver.opener(for: "null-co")),
        "null-aio": entry("null-aio", NullDriver.opener(for: "null-aio")),
        // The nbd driver also takes the flat host/port/path keys of QEMU's earlier form.
        "nbd": DriverEntry(keys: schemaKeys(of: "nbd").union(NBDClientOptions.legacyKeys), open: NBDClientDriver.opener),
        "http": entry("http", CurlDriver.opener(for: "http")),
        "https": entry("https", CurlDriver.opener(for: "https")),
        "ftp": entry("ftp", CurlDriver.opener(for: "ftp")),
        "ftps": entry("ftps", CurlDriver.opener(for: "ftps")),
        "tftp": entry("tftp", CurlDriver.opener(for: "tftp")),
        "bochs": entry("bochs", BochsDriver.opener),
        "cloop": entry("cloop", CloopDriver.opener),
        "dmg": entry("dmg", DmgDriver.opener),
        "archipelago": entry("archipelago", ArchipelagoRefusal.opener),
        "vvfat": entry("vvfat", VvfatDriver.opener),
        "rbd": entry("rbd", RBDDriver.opener),
    ]

    /// The option names of `driver` in the schema: the members of its `BlockdevOptions` branch.
    public static func schemaKeys(of driver: String) -> Set<String> {
        guard let members = QAPIIntrospection.members(ofBranch: driver, of: "BlockdevOptions") else {
            preconditionFailure("driver '\(driver)' has no branch in the schema's BlockdevOptions")
        }
        return Set(members)
    }

    private static func entry(_ driver: String, _ open: @escaping DriverOpener) -> DriverEntry {
        DriverEntry(keys: schemaKeys(of: driver), open: open)
    }
}
