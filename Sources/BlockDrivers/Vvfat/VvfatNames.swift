/// The directory entries of a vvfat disk: 8.3 short names with QEMU's numeric tails, the VFAT
/// long-name entries before them, and the FAT date and time fields.
enum VvfatNames {
    /// The characters a short name keeps (after upper-casing); any other makes the name lossy.
    private static let shortSpecials = Array("$%'-_@~`!(){}^#&".utf8)

    /// The short-name byte for a character, or 0 when a short name cannot hold it (QEMU's rule,
    /// which compares the low byte of a non-ASCII character with the special characters).
    static func shortCharacter(_ scalar: Unicode.Scalar) -> UInt8 {
        var value = scalar.value
        let upper = scalar.properties.uppercaseMapping.unicodeScalars
        if upper.count == 1, let first = upper.first { value = first.value }
        if (0x30...0x39).contains(value) || (0x41...0x5a).contains(value) { return UInt8(value) }
        let low = UInt8(truncatingIfNeeded: value)
        return low != 0 && shortSpecials.contains(low) ? low : 0
    }

    /// The 11 bytes of the short name of `name` before any numeric tail, and whether the
    /// conversion lost something (then a tail is always added).
    static func shortBase(_ name: String) -> (name: [UInt8], lossy: Bool) {
        var bytes = [UInt8](repeating: 0x20, count: 11)
        var lossy = false
        var count = 0
        let scalars = Array(name.unicodeScalars)
        var lastDot: Int?
        for (index, scalar) in scalars.enumerated() {
            if scalar == "." {
                if count == 0 {
                    lossy = true
                } else {
                    if lastDot != nil { lossy = true }
                    lastDot = index
                }
            } else if lastDot == nil {
                let value = shortCharacter(scalar)
                if count < 8 && value != 0 {
                    bytes[count] = value
                    count += 1
                } else {
                    lossy = true
                }
            }
        }
        if let lastDot {
            var extensionCount = 0
            for scalar in scalars[(lastDot + 1)...] {
                let value = shortCharacter(scalar)
                if extensionCount < 3 && value != 0 {
                    bytes[8 + extensionCount] = value
                    extensionCount += 1
                } else {
                    lossy = true
                }
            }
        }
        if bytes[0] == 0xe5 { bytes[0] = 0x05 }
        return (bytes, lossy)
    }

    /// Puts the numeric tail `~number` into a short name whose base is `baseLength` characters long.
    static func withTail(_ name: [UInt8], baseLength: Int, number: Int) -> [UInt8] {
        let tail = Array("~\(number)".utf8)
        var result = name
        let start = min(baseLength, 8 - tail.count)
        result.replaceSubrange(start..<start + tail.count, with: tail)
        return result
    }

    /// The checksum of a short name that its long-name entries carry.
    static func checksum(_ name: ArraySlice<UInt8>) -> UInt8 {
        var sum: UInt8 = 0
        for byte in name { sum = ((sum & 1) << 7 | (sum & 0xfe) >> 1) &+ byte }
        return sum
    }

    /// The long-name entries (32 bytes each, in disk order) of `name`, without the checksum byte
    /// (offset 13), which is set once the short name is known.
    static func longEntries(_ name: String) -> [[UInt8]] {
        let units = Array(name.utf16)
        let count = (units.count * 2 + 25) / 26
        var entries = [[UInt8]](repeating: [UInt8](repeating: 0, count: 32), count: count)
        for index in 0..<count {
            entries[index][0] = UInt8(count - index) | (index == 0 ? 0x40 : 0)
            entries[index][11] = 0x0f
        }
        for position in 0..<(26 * count) {
            let byte: UInt8
            if position >= 2 * units.count + 2 {
                byte = 0xff
            } else {
                let unit = position / 2 < units.count ? units[position / 2] : 0
                byte = position % 2 == 0 ? UInt8(unit & 0xff) : UInt8(unit >> 8)
            }
            let entry = count - 1 - position / 26
            let within = position % 26
            let offset = within < 10 ? 1 + within : within < 22 ? 14 + within - 10 : 28 + within - 22
            entries[entry][offset] = byte
        }
        return entries
    }
}
