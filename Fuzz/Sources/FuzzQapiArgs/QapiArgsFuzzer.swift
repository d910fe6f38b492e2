import FuzzSupport
import JSON
import QAPI

/// Every type the schema decodes: command arguments and results, and event data.
let decodableTypes: [any QAPIValue.Type] = {
    func types<C: QAPICommand>(_ command: C.Type) -> [any QAPIValue.Type] { [C.Arguments.self, C.Result.self] }
    return QAPICommands.all.flatMap { types($0) } + QAPIEvents.all.map { $0 as any QAPIValue.Type }
}()

/// qapi-args: the first byte picks a schema type, the rest is JSON decoded as that type. Decoding
/// may reject the value (with QEMU's message); a value it accepts must encode to JSON that decodes
/// again to the same encoding.
@_cdecl("LLVMFuzzerTestOneInput")
public func qapiArgsFuzzInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    var input = FuzzInput(fuzzBytes(data, size))
    let type = decodableTypes[Int(input.byte()) % decodableTypes.count]
    guard let value = try? JSONValue.parse(bytes: input.rest()) else { return 0 }
    check(type, value)
    return 0
}

func check<T: QAPIValue>(_ type: T.Type, _ value: JSONValue) {
    let decoded: T
    do {
        decoded = try T(decoding: value, at: "")
    } catch {
        _ = error.description
        return
    }
    let encoded = decoded.json
    do {
        let again = try T(decoding: encoded, at: "")
        guard again.json == encoded else {
            fatalError("\(T.self): \(encoded.serialized()) decodes to \(again.json.serialized())")
        }
    } catch {
        fatalError("\(T.self): its own encoding \(encoded.serialized()) does not decode: \(error.description)")
    }
}

@main
enum QapiArgsFuzzer {
    static func main() { runFuzzer() }
}
