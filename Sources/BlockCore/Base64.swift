/// Standard base64 (RFC 4648) decoding.
public enum Base64 {
    /// The decoded bytes. `strict`: nil for any character outside the alphabet (whitespace included)
    /// or misplaced padding, as QEMU's secrets require; otherwise other characters are skipped
    /// (property lists wrap and indent their base64) and the first `=` ends the data.
    public static func decode<Bytes: Collection>(_ text: Bytes, strict: Bool) -> [UInt8]? where Bytes.Element == UInt8 {
        var output: [UInt8] = []
        output.reserveCapacity(text.count / 4 * 3)
        var accumulator: UInt32 = 0
        var bits = 0
        var padding = 0
        for character in text {
            let value: UInt32
            switch character {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = UInt32(character - UInt8(ascii: "A"))
            case UInt8(ascii: "a")...UInt8(ascii: "z"): value = UInt32(character - UInt8(ascii: "a")) + 26
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = UInt32(character - UInt8(ascii: "0")) + 52
            case UInt8(ascii: "+"): value = 62
            case UInt8(ascii: "/"): value = 63
            case UInt8(ascii: "="):
                guard strict else { return output }
                padding += 1
                continue
            default:
                if strict { return nil }
                continue
            }
            if padding > 0 { return nil }
            accumulator = accumulator << 6 | value
            bits += 6
            if bits >= 8 {
                bits -= 8
                output.append(UInt8(truncatingIfNeeded: accumulator >> UInt32(bits)))
                accumulator &= (1 << UInt32(bits)) - 1
            }
        }
        if strict && (padding > 2 || (padding > 0 && text.count % 4 != 0)) { return nil }
        return output
    }
}
