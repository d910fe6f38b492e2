import FuzzSupport
import JSON
import QAPI
import QMP

/// Every command of the schema, each with a handler that only decodes its arguments: no side effects.
let decodingOnlyTable: QMPCommandTable = {
    let table = QMPCommandTable()
    func register<C: QAPICommand>(_ command: C.Type) {
        table.register(command) { (_: C.Arguments) throws(QAPIError) -> C.Result in
            throw .generic("decoded; not run by the fuzzer")
        }
    }
    for command in QAPICommands.all { register(command) }
    return table
}()

/// qmp-json: the input is what a monitor client sends. It is split into JSON texts (once whole and
/// once in two pieces at a point the input picks, which must agree), each text is parsed and handled
/// by a QMP session, and every reply is serialized as the server would send it. A text that parses
/// must also survive a serialize/parse round trip unchanged.
@_cdecl("LLVMFuzzerTestOneInput")
public func qmpJsonFuzzInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = fuzzBytes(data, size)
    var whole = JSONStreamSplitter(maxLength: 64 * 1024)
    let pieces = whole.feed(bytes)
    let cut = bytes.isEmpty ? 0 : Int(bytes[0]) % (bytes.count + 1)
    var split = JSONStreamSplitter(maxLength: 64 * 1024)
    let inTwo = split.feed(bytes[..<cut]) + split.feed(bytes[cut...])
    guard pieces == inTwo else { fatalError("JSONStreamSplitter gave different pieces when fed in two parts at \(cut)") }

    var session = QMPSession(commands: decodingOnlyTable)
    for piece in pieces {
        if let reply = session.handle(piece) { _ = reply.serialized() }
        if case .value(let text) = piece { checkRoundTrip(text) }
    }
    checkRoundTrip(bytes)
    return 0
}

/// A parsed value, serialized, parses again to a value that serializes the same (compact and indented).
func checkRoundTrip(_ text: [UInt8]) {
    guard let value = try? JSONValue.parse(bytes: text) else { return }
    let compact = value.serialized()
    let again: JSONValue
    do {
        again = try JSONValue.parse(compact)
    } catch {
        fatalError("serialized JSON does not parse: \(error) in \(compact)")
    }
    guard again.serialized() == compact else { fatalError("JSON round trip changed \(compact) into \(again.serialized())") }
    guard let pretty = try? JSONValue.parse(value.prettyPrinted()), pretty.serialized() == compact else {
        fatalError("indented JSON does not parse back to \(compact)")
    }
}

@main
enum QmpJsonFuzzer {
    static func main() { runFuzzer() }
}
