#if canImport(Glibc)
import Glibc
#endif
import BlockCore

/// Creation-option helpers shared by the vdi, vpc and vhdx formats: qemu-img's value parsing and
/// the options of the protocol layer that every format passes through.
enum FormatOptions {
    /// A boolean option, `on` or `off` as qemu-img accepts it; nil when absent.
    static func bool(_ options: [String: String], _ key: String) throws(BlockError) -> Bool? {
        guard let value = options[key] else { return nil }
        switch value {
        case "on": return true
        case "off": return false
        default: throw .invalid("Parameter '\(key)' expects 'on' or 'off'")
        }
    }

    /// A size option (`k`, `M`, `G`, `T` suffixes, powers of 1024); nil when absent.
    static func size(_ options: [String: String], _ key: String) throws(BlockError) -> UInt64? {
        guard let text = options[key] else { return nil }
        var digits = Substring(text)
        var shift: UInt64 = 0
        if let last = digits.last, let index = "bkmgtpe".firstIndex(of: Character(last.lowercased())) {
            shift = UInt64("bkmgtpe".distance(from: "bkmgtpe".startIndex, to: index)) * 10
            digits = digits.dropLast()
        }
        guard let value = UInt64(digits), shift == 0 || value <= UInt64.max >> shift else {
            throw .invalid("Parameter '\(key)' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.")
        }
        return value << shift
    }

    /// The words qemu-img prints for the protocol options given (nocow, preallocation,
    /// extent_size_hint, in its order); refuses the preallocation modes a file cannot take.
    static func protocolWords(_ options: [String: String]) throws(BlockError) -> String {
        var words = ""
        if let nocow = try bool(options, "nocow") { words += " nocow=\(nocow ? "on" : "off")" }
        if let mode = options["preallocation"] {
            guard ["off", "falloc", "full"].contains(mode) else {
                throw .invalid(mode == "metadata" ? "Unsupported preallocation mode: metadata" : "Parameter 'preallocation' does not accept value '\(mode)'")
            }
            words += " preallocation=\(mode)"
        }
        if let hint = try size(options, "extent_size_hint") { words += " extent_size_hint=\(hint)" }
        return words
    }

    /// A random (version 4) UUID.
    static func randomUUID() -> [UInt8] {
        var bytes = (0..<16).map { _ in UInt8.random(in: 0...255) }
        bytes[6] = bytes[6] & 0x0f | 0x40
        bytes[8] = bytes[8] & 0x3f | 0x80
        return bytes
    }

    /// Writes a new file at `path` holding `bytes`, `length` bytes long (the rest sparse zeroes);
    /// nothing is left behind on error.
    static func writeNewFile(_ path: String, _ bytes: [UInt8], length: UInt64) throws(BlockError) {
        try writeNewFile(path, [(0, bytes)], length: length)
    }

    /// Writes a new file at `path` with each piece at its offset, `length` bytes long.
    static func writeNewFile(_ path: String, _ pieces: [(offset: UInt64, bytes: [UInt8])], length: UInt64) throws(BlockError) {
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .posix("Could not create '\(path)'") }
        var failure: BlockError?
        if ftruncate(fd, off_t(length)) != 0 { failure = .posix("Could not resize '\(path)'") }
        for piece in pieces where failure == nil {
            let written = piece.bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(piece.offset)) }
            if written != piece.bytes.count { failure = .posix("Could not write '\(path)'") }
        }
        if failure == nil && fsync(fd) != 0 { failure = .posix("Could not flush '\(path)'") }
        close(fd)
        if let failure {
            unlink(path)
            throw failure
        }
    }
}
