import BlockCore
import JSON

/// One image format as probing, `blockimg create`, `info` and `check` see it.
public struct ImageFormat: Sendable {
    /// What `create` writes: the "Formatting ..." words after `fmt=NAME` (qemu-img's order).
    public typealias Create = @Sendable (_ path: String, _ size: UInt64, _ options: [String: String]) throws(BlockError) -> String
    /// What `info` shows of an open node of this format.
    public typealias Details = @Sendable (_ node: BlockNode) -> ImageDetails
    /// A consistency check of the image in `file` (qemu-img check's counters); `repair` is nil,
    /// `.leaks` or `.all`.
    public typealias Check = @Sendable (_ file: BlockNode, _ repair: Qcow2RepairMode?) throws(BlockError) -> Qcow2CheckReport

    /// The driver name (`--blockdev driver=`, `-f`).
    public let name: String
    /// How sure the format is that a file with these first bytes (up to 2048) and this name is its
    /// own: 0 (not at all) to 100 (certain), as QEMU's probes score.
    public let probe: @Sendable (_ header: [UInt8], _ filename: String) -> Int
    /// The `-o` options `create` accepts (with `size`); empty for formats that cannot be created.
    public let createOptions: [String]
    /// Writes a new image at `path` (its own files; nothing left behind on error); nil when QEMU
    /// cannot create the format either.
    public let create: Create?
    /// What `info` shows beyond sizes; nil when the format shows nothing more.
    public let details: Details?
    /// The check of `blockimg check`; nil when qemu-img does not check the format.
    public let check: Check?

    /// Describes a format.
    public init(
        name: String, probe: @escaping @Sendable ([UInt8], String) -> Int, createOptions: [String] = [],
        create: Create? = nil, details: Details? = nil, check: Check? = nil
    ) {
        self.name = name
        self.probe = probe
        self.createOptions = createOptions
        self.create = create
        self.details = details
        self.check = check
    }
}

/// The members of qemu-img's ImageInfo that depend on the format.
public struct ImageDetails: Sendable {
    /// `cluster-size`, where the format has clusters or blocks.
    public var clusterSize: UInt64?
    /// The backing file name as stored in the image, and its format when stored.
    public var backingFile: String?
    public var backingFormat: String?
    /// `dirty-flag`: the image was not closed cleanly.
    public var dirty = false
    /// Whether qemu-img shows `dirty-flag` at all (not for formats without QEMU's get_info, such as parallels).
    public var showsDirtyFlag = true
    /// `format-specific`: `{"type": NAME, "data": {...}}`.
    public var specific: JSONValue?

    /// Nothing known beyond the defaults.
    public init() {}
}

/// Every format beyond raw and qcow2 (those two keep their own paths in the image tool), the one
/// list each new format driver adds its line to.
public enum ImageFormats {
    /// The formats, in probing order.
    public static let all: [ImageFormat] = [
        QedFormat.format,
        QcowFormat.format,
        ParallelsFormat.format,
        VdiFormat.format,
        VpcFormat.format,
        VhdxFormat.format,
        ImageFormat(name: "bochs", probe: BochsDriver.probe),
        ImageFormat(name: "cloop", probe: CloopDriver.probe),
        ImageFormat(name: "dmg", probe: DmgDriver.probe),
        VmdkFormat.format,
    ]

    /// The format registered under `name`.
    public static func named(_ name: String) -> ImageFormat? {
        all.first { $0.name == name }
    }

    /// The format that claims these first bytes most strongly: qcow2 by its magic (version 1 is qcow), else the highest
    /// score of the registered formats, else `raw`.
    public static func probe(header: [UInt8], filename: String) -> String {
        if header.count >= 8 && Array(header[0..<4]) == [0x51, 0x46, 0x49, 0xfb] && !header[4..<8].elementsEqual([0, 0, 0, 1]) {
            return "qcow2"
        }
        var best = ("raw", 1)
        for format in all {
            let score = format.probe(header, filename)
            if score > best.1 { best = (format.name, score) }
        }
        return best.0
    }

    /// How many first bytes probing reads (QEMU's probe buffer).
    public static let probeLength = 2048
}
