import JSON

// QAPI's integer types, with QEMU's checks and messages:
//
// - 'int' and 'int64' are Int64; 'int8', 'int16', 'int32' are range-checked
//   Int8/Int16/Int32.  A value that is not a JSON integer fails with
//   "Invalid parameter type for 'x', expected: integer"; one out of range
//   with "Parameter 'x' expects int32" (and so on).
// - 'uint64' and 'size' are UInt64; 'uint8', 'uint16', 'uint32' are
//   range-checked.  QEMU reads every unsigned type through its uint64
//   reader, so a value that is not a number fails with
//   "Parameter 'x' expects uint64", and one out of range with
//   "Parameter 'x' expects uint32_t" (and so on, C type names for the narrow ones, as QEMU).  Unlike QEMU, negative
//   numbers are refused rather than wrapped around.
//
// JSONValue keeps integers up to Int64.max exact; larger ones (up to
// UInt64.max) arrive as `.double`, and are accepted for the unsigned types
// when they are whole numbers of at least 2^63, which is the only way the
// JSON parser produces them.  Encoding a UInt64 above Int64.max likewise
// yields a `.double`.

/// Decoding helpers shared by the integer conformances.
public enum QAPIIntegerDecoding {
    /// Decodes a signed integer of QAPI type `typeName`.
    public static func signed<T: FixedWidthInteger & SignedInteger>(
        _ value: JSONValue, at path: String, typeName: String
    ) throws(QAPIError) -> T {
        guard case .integer(let number) = value else {
            throw .invalidParameterType(path, expected: "integer")
        }
        guard let exact = T(exactly: number) else {
            throw .invalidParameterValue(path, expects: rangeName(typeName))
        }
        return exact
    }

    /// How QEMU names a type in an out-of-range message: the C type for the narrow ones
    /// (`uint32_t`), the QAPI name for the 64-bit ones.
    static func rangeName(_ typeName: String) -> String {
        ["int8", "int16", "int32", "uint8", "uint16", "uint32"].contains(typeName) ? typeName + "_t" : typeName
    }

    /// Decodes an unsigned integer of QAPI type `typeName`.
    public static func unsigned<T: FixedWidthInteger & UnsignedInteger>(
        _ value: JSONValue, at path: String, typeName: String
    ) throws(QAPIError) -> T {
        let wide: UInt64
        switch value {
        case .integer(let number):
            guard number >= 0 else { throw .invalidParameterValue(path, expects: rangeName(typeName)) }
            wide = UInt64(number)
        case .double(let number):
            // Integers above Int64.max: whole, from 2^63 up to 2^64, which is what the parser makes of
            // the largest ones after rounding; anything else was written as a fraction or exponent.
            guard number.isFinite, number == number.rounded(),
                  number >= 9_223_372_036_854_775_808.0, number <= 18_446_744_073_709_551_616.0 else {
                throw .invalidParameterValue(path, expects: "uint64")
            }
            wide = number == 18_446_744_073_709_551_616.0 ? UInt64.max : UInt64(number)
        default:
            throw .invalidParameterValue(path, expects: "uint64")
        }
        guard let exact = T(exactly: wide) else {
            throw .invalidParameterValue(path, expects: rangeName(typeName))
        }
        return exact
    }

    /// The JSON form of an unsigned integer.
    public static func json<T: FixedWidthInteger & UnsignedInteger>(_ value: T) -> JSONValue {
        if let exact = Int64(exactly: value) { return .integer(exact) }
        return .double(Double(value))
    }
}

extension Int64: QAPIValue {
    /// QAPI 'int' and 'int64'.
    public init(decoding value: JSONValue, at path: String) throws(QAPIError) {
        self = try QAPIIntegerDecoding.signed(value, at: path, typeName: "int64")
    }

    public var json: JSONValue { .integer(self) }
}

extension Int32: QAPIValue {
    /// QAPI 'int32'.
    public init(decoding value: JSONValue, at path: String) throws(QAPIError) {
        self = try QAPIIntegerDecoding.signed(value, at: path, typeName: "int32")
    }

    public var json: JSONValue { .integer(Int64(self)) }
}

extension Int16: QAPIValue {
    /// QAPI 'int16'.
    public init(decoding value: JSONValue, at path: String) throws(QAPIError) {
        self = try QAPIIntegerDecoding.signed(value, at: path, typeName: "int16")
    }

    public var json: JSONValue { .integer(Int64(self)) }
}

extension Int8: QAPIValue {
    /// QAPI 'int8'.
    public init(decoding value: JSONValue, at path: String) throws(QAPIError) {
        self = try QAPIIntegerDecoding.signed(value, at: path, typeName: "int8")
    }

    public var json: JSONValue { .integer(Int64(self)) }
}

extension UInt64: QAPIValue {
    /// QAPI 'uint64' and 'size'.
    public init(decoding value: JSONValue, at path: String) throws(QAPIError) {
        self = try QAPIIntegerDecoding.unsigned(value, at: path, typeName: "uint64")
    }

    public var json: JSONValue { QAPIIntegerDecoding.json(self) }
}

extension UInt32: QAPIValue {
    /// QAPI 'uint32'.
    public init(decoding value: JSONValue, at path: String) throws(QAPIError) {
        self = try QAPIIntegerDecoding.unsigned(value, at: path, typeName: "uint32")
    }

    public var json: JSONValue { .integer(Int64(self)) }
}

extension UInt16: QAPIValue {
    /// QAPI 'uint16'.
    public init(decoding value: JSONValue, at path: String) throws(QAPIError) {
        self = try QAPIIntegerDecoding.unsigned(value, at: path, typeName: "uint16")
    }

    public var json: JSONValue { .integer(Int64(self)) }
}

extension UInt8: QAPIValue {
    /// QAPI 'uint8'.
    public init(decoding value: JSONValue, at path: String) throws(QAPIError) {
        self = try QAPIIntegerDecoding.unsigned(value, at: path, typeName: "uint8")
    }

    public var json: JSONValue { .integer(Int64(self)) }
}
