import BlockCore
import BlockDrivers
import FuzzSupport

/// qcow2-check: the input is an image file, edited and checked the way `blockimg snapshot` and
/// `blockimg check` do: its snapshots are listed, one is taken, the image reverted to its first
/// snapshot and the new one deleted; then it is checked, and checked with `-r all`. Errors are
/// expected; traps, sanitizer reports and hangs are findings.
@_cdecl("LLVMFuzzerTestOneInput")
public func qcow2CheckFuzzInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let (graph, file) = FuzzImages.open(fuzzBytes(data, size)) else { return 0 }
    defer { graph.closeAll() }
    if let editor = try? Qcow2SnapshotEditor(file: file) {
        let first = editor.list.first
        if (try? editor.create(name: "fuzz")) != nil {
            if let first { _ = try? editor.apply(first.id) }
            _ = try? editor.delete("fuzz")
        }
    }
    _ = try? Qcow2Check.run(file: file, repair: nil)
    _ = try? Qcow2Check.run(file: file, repair: .all)
    return 0
}

@main
enum Qcow2CheckFuzzer {
    static func main() { runFuzzer() }
}
