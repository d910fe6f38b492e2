import BlockCore

/// Every driver this build can open, by the name `--blockdev driver=` uses.
public enum Drivers {
    /// The table a `BlockGraph` is created with.
    public static let all: [String: DriverEntry] = {
        let file: Set<String> = ["filename", "locking", "x-check-cache-dropped"]
        let null: Set<String> = ["size", "latency-ns", "read-zeroes"]
        return [
            "file": DriverEntry(keys: file, open: FileDriverOpener.opener(for: "file")),
            "host_device": DriverEntry(keys: file, open: FileDriverOpener.opener(for: "host_device")),
            "host_cdrom": DriverEntry(keys: file, open: FileDriverOpener.opener(for: "host_cdrom")),
            "raw": DriverEntry(keys: ["file", "offset", "size"], open: RawDriver.opener),
            "qcow2": DriverEntry(keys: Qcow2Opener.keys, open: Qcow2Opener.opener),
            "blkdebug": DriverEntry(keys: ["image", "config", "align", "inject-error", "set-state"], open: BlkdebugDriver.opener),
            "blkverify": DriverEntry(keys: ["test", "raw"], open: BlkverifyDriver.opener),
            "quorum": DriverEntry(
                keys: ["children", "vote-threshold", "blkverify", "rewrite-corrupted", "read-pattern"], open: QuorumDriver.opener),
            "throttle": DriverEntry(keys: ["throttle-group", "file"], open: ThrottleDriver.opener),
            "null-co": DriverEntry(keys: null, open: NullDriver.opener(for: "null-co")),
            "null-aio": DriverEntry(keys: null, open: NullDriver.opener(for: "null-aio")),
            "nbd": DriverEntry(keys: NBDClientOptions.keys, open: NBDClientDriver.opener),
            "http": DriverEntry(keys: CurlDriver.keys(for: "http"), open: CurlDriver.opener(for: "http")),
            "https": DriverEntry(keys: CurlDriver.keys(for: "https"), open: CurlDriver.opener(for: "https")),
            "ftp": DriverEntry(keys: CurlDriver.keys(for: "ftp"), open: CurlDriver.opener(for: "ftp")),
            "ftps": DriverEntry(keys: CurlDriver.keys(for: "ftps"), open: CurlDriver.opener(for: "ftps")),
            "tftp": DriverEntry(keys: CurlDriver.keys(for: "tftp"), open: CurlDriver.opener(for: "tftp")),
        ]
    }()
}
