import BlockCore

/// Every driver this build can open, by the name `--blockdev driver=` uses.
public enum Drivers {
    /// The table a `BlockGraph` is created with.
    public static let all: [String: DriverOpener] = [
        "file": FileDriverOpener.opener(for: "file"),
        "host_device": FileDriverOpener.opener(for: "host_device"),
        "host_cdrom": FileDriverOpener.opener(for: "host_cdrom"),
        "raw": RawDriver.opener,
        "null-co": NullDriver.opener(for: "null-co"),
        "null-aio": NullDriver.opener(for: "null-aio"),
    ]
}
