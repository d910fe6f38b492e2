#if canImport(Glibc)
import Glibc
#endif

/// Sizes as qemu-img writes and reads them.
public enum Sizes {
    /// Parses `1048576`, `10G`, `1.5M`, `512k` (suffixes B K M G T P E, any case; powers of 1024).
    public static func parse(_ text: String) -> UInt64? {
        var digits = Substring(text)
        var multiplier: Double = 1
        if let last = digits.last, last.isLetter {
            let exponents: [Character: Double] = ["b": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6]
            guard let exponent = exponents[Character(last.lowercased())] else { return nil }
            multiplier = pow(1024, exponent)
            digits = digits.dropLast()
        }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isNumber || $0 == "." }), let value = Double(digits), value >= 0 else { return nil }
        if !digits.contains("."), multiplier == 1 { return UInt64(digits) }
        let bytes = (value * multiplier).rounded(.down)
        guard bytes < 18_446_744_073_709_551_616 else { return nil }
        return UInt64(bytes)
    }

    /// `10 MiB`, `324 KiB`, `1.5 GiB`: three significant digits, as qemu's `size_to_str`.
    public static func human(_ value: UInt64) -> String {
        let suffixes = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
        var unit = 0
        // Switch to the next unit once the number would reach 1000.
        while unit + 1 < suffixes.count, Double(value) >= 1000 * pow(1024, Double(unit)) { unit += 1 }
        let scaled = Double(value) / pow(1024, Double(unit))
        return CFormat.string("%0.3g", scaled) + " \(suffixes[unit])B"
    }
}
