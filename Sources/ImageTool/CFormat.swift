#if canImport(Glibc)
import Glibc
#endif

/// printf-style formatting of one number, as qemu-img prints sizes and percentages.
public enum CFormat {
    /// `value` formatted by the C format `format` (one double conversion, e.g. "%0.3g").
    public static func string(_ format: String, _ value: Double) -> String {
        var buffer = [CChar](repeating: 0, count: 64)
        let count = withVaList([value]) { arguments in
            buffer.withUnsafeMutableBufferPointer { vsnprintf($0.baseAddress, $0.count, format, arguments) }
        }
        guard count >= 0 else { return "" }
        let length = min(Int(count), buffer.count - 1)
        return String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
