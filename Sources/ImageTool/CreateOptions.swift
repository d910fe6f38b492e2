import BlockDrivers

/// The `-o key=value,...` options of `create` and `convert`, checked against what each format accepts.
public struct CreateOptions: Sendable {
    /// The options in the order given; later ones override earlier ones.
    public internal(set) var values: [String: String] = [:]

    /// The option names each format accepts.
    public static let known: [String: [String]] = [
        "raw": ["size", "preallocation"],
        "qcow2": [
            "size", "compat", "backing_file", "backing_fmt", "cluster_size", "lazy_refcounts", "refcount_bits",
            "preallocation", "compression_type", "extended_l2",
        ],
    ]

    /// The option names `format` accepts: the table above, or the registered format's.
    static func allowed(_ format: String) -> [String] {
        known[format] ?? ImageFormats.named(format).map { ["size"] + $0.createOptions } ?? []
    }

    /// Parses every `-o` argument for `format`; unknown names and malformed pairs are errors.
    public init(_ arguments: [String], format: String) throws(ImageToolError) {
        let allowed = CreateOptions.allowed(format)
        for argument in arguments {
            for pair in argument.split(separator: ",", omittingEmptySubsequences: true) {
                guard let equals = pair.firstIndex(of: "=") else {
                    throw ImageToolError("Invalid option list: '\(argument)': expected key=value")
                }
                let key = String(pair[..<equals])
                guard allowed.contains(key) else {
                    throw ImageToolError("Invalid parameter '\(key)' for format \(format) (supported: \(allowed.joined(separator: ", ")))")
                }
                values[key] = String(pair[pair.index(after: equals)...])
            }
        }
    }

    /// The help text for `-o help`.
    public static func help(format: String) -> String {
        "Supported options for \(format):\n" + allowed(format).map { "  \($0)" }.joined(separator: "\n")
    }

    /// An on/off option.
    func flag(_ key: String) throws(ImageToolError) -> Bool? {
        guard let value = values[key] else { return nil }
        switch value {
        case "on", "true", "yes": return true
        case "off", "false", "no": return false
        default: throw ImageToolError("Parameter '\(key)' expects 'on' or 'off'")
        }
    }

    /// A size option.
    func size(_ key: String) throws(ImageToolError) -> UInt64? {
        guard let value = values[key] else { return nil }
        guard let size = Sizes.parse(value) else {
            throw ImageToolError("Parameter '\(key)' expects a non-negative number below 2^64 (optional suffix k, M, G, T, P, E)")
        }
        return size
    }

    /// The qcow2 settings these options describe, for an image of `size` bytes.
    func qcow2(size: UInt64) throws(ImageToolError) -> Qcow2CreateOptions {
        var options = Qcow2CreateOptions(size: size)
        if let value = try self.size("cluster_size") { options.clusterSize = Int(clamping: value) }
        switch values["compat"] {
        case nil, "1.1", "v3": options.version = 3
        case "0.10", "v2": options.version = 2
        case let other?: throw ImageToolError("Parameter 'compat': invalid compatibility level '\(other)' (use 0.10 or 1.1)")
        }
        if let bits = values["refcount_bits"] {
            guard let value = Int(bits) else { throw ImageToolError("Parameter 'refcount_bits' expects a number") }
            options.refcountBits = value
        }
        options.lazyRefcounts = try flag("lazy_refcounts") ?? false
        if let mode = values["preallocation"] {
            guard let value = Qcow2Preallocation(rawValue: mode) else {
                throw ImageToolError("Parameter 'preallocation': invalid value '\(mode)' (use off, metadata, falloc or full)")
            }
            options.preallocation = value
        }
        if let type = values["compression_type"], type != "zlib" {
            throw ImageToolError("Parameter 'compression_type': '\(type)' is not supported (only zlib)")
        }
        if try flag("extended_l2") == true { throw ImageToolError("Parameter 'extended_l2': extended L2 entries are not supported") }
        options.backingFile = values["backing_file"]
        options.backingFormat = values["backing_fmt"]
        return options
    }
}
