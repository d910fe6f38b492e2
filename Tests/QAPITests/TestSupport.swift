import JSON
import XCTest

import QAPI

/// Parses test JSON, failing the test on a syntax error.
func json(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> JSONValue {
    do {
        return try JSONValue.parse(text)
    } catch {
        XCTFail("bad test JSON: \(error)", file: file, line: line)
        return .null
    }
}

/// Decodes `text` as `T` at the root and returns the error message, failing the test if decoding works.
func decodingError<T: QAPIValue>(
    _ type: T.Type, _ text: String, file: StaticString = #filePath, line: UInt = #line
) -> QAPIError? {
    let value = json(text, file: file, line: line)
    do throws(QAPIError) {
        let decoded = try T(decoding: value, at: "")
        XCTFail("decoding succeeded: \(decoded.json.serialized())", file: file, line: line)
        return nil
    } catch {
        return error
    }
}

/// Decodes `text` as `T`, failing the test on an error.
func decoded<T: QAPIValue>(
    _ type: T.Type, _ text: String, file: StaticString = #filePath, line: UInt = #line
) -> T? {
    let value = json(text, file: file, line: line)
    do throws(QAPIError) {
        return try T(decoding: value, at: "")
    } catch {
        XCTFail("decoding failed: \(error.description)", file: file, line: line)
        return nil
    }
}
