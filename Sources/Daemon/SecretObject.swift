#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock

/// A `secret` object: a password or key given inline (`data`) or in a file (`file`), raw or base64.
public struct SecretSpec: Sendable, Equatable {
    /// `data`, when given inline.
    public var data: String?
    /// `file`, when read from a file.
    public var file: String?
    /// `format`: `raw` (the default) or `base64`.
    public var base64: Bool

    static func parse(_ reader: OptionReader, id: String) throws(OptionError) -> SecretSpec {
        let spec = SecretSpec(
            data: try reader.string("data"), file: try reader.string("file"),
            base64: try reader.choice("format", ["raw", "base64"]) == "base64")
        _ = try reader.bool("loaded")
        if let keyid = try reader.string("keyid") {
            _ = try reader.string("iv")
            _ = try NodeObjects.shared.secret(keyid)
            throw OptionError("Secret '\(id)': secrets encrypted with another secret (keyid) are not supported by blockd")
        }
        _ = try spec.value()
        return spec
    }

    /// The secret's bytes, QEMU's messages when they cannot be had.
    func value() throws(OptionError) -> [UInt8] {
        if data != nil && file != nil { throw OptionError("'file' and 'data' are mutually exclusive") }
        var bytes: [UInt8]
        if let data {
            bytes = Array(data.utf8)
        } else if let file {
            bytes = try SecretSpec.read(file)
        } else {
            throw OptionError("Either 'file' or 'data' must be provided")
        }
        if base64 {
            guard let decoded = Base64.decode(bytes, strict: true) else { throw OptionError("Base64 data contains invalid characters") }
            bytes = decoded
        }
        return bytes
    }

    private static func read(_ path: String) throws(OptionError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw OptionError("Unable to read \(path): Failed to open file “\(path)”: \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count <= 1 << 20 {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else { throw OptionError("Unable to read \(path): \(String(cString: strerror(errno)))") }
            if count == 0 { return bytes }
            bytes += chunk[0..<count]
        }
        throw OptionError("Unable to read \(path): larger than 1 MiB")
    }
}
