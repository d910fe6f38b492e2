import BlockCore
import BlockDrivers
import FuzzSupport

/// The graph the images open in: every driver (backing files are opened by their header's format).
let drivers = Drivers.all

/// Backing files a fuzzed header may name (`base.raw`, `base.qcow2`), beside the image.
let scratch: String = {
    FuzzScratch.write((0..<(64 * 1024)).map { UInt8(truncatingIfNeeded: $0 * 7 + 1) }, to: "base.raw")
    var options = Qcow2CreateOptions(size: 1 << 20)
    options.clusterSize = 4096
    guard let layout = try? Qcow2Create.layout(options) else { fatalError("cannot lay out base.qcow2") }
    var image = [UInt8](repeating: 0, count: Int(layout.fileLength))
    for region in layout.regions { image.replaceSubrange(Int(region.offset)..<Int(region.offset) + region.bytes.count, with: region.bytes) }
    FuzzScratch.write(image, to: "base.qcow2")
    return FuzzScratch.directory
}()

/// qcow2: the input is an image file. It is opened through the qcow2 driver on a file node, read
/// (data and allocation, the first 4 MiB and the last cluster), written a little, read back (what
/// was written must be what is read), flushed, closed; then its snapshots are listed and edited,
/// and it is checked and repaired. Errors are expected; traps, sanitizer reports and hangs are not.
@_cdecl("LLVMFuzzerTestOneInput")
public func qcow2FuzzInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = fuzzBytes(data, size)
    // A backing file name with a '/' could reach any host file: only names beside the image are opened.
    guard backingNameStaysBeside(bytes) else { return 0 }
    let path = FuzzScratch.write(bytes, to: "img.qcow2")
    _ = scratch
    let graph = BlockGraph(drivers: drivers)
    defer { graph.closeAll() }
    guard let file = try? graph.open(.object([
        "driver": .string("file"), "node-name": .string("file0"), "filename": .string(path),
    ])) else { return 0 }
    if let image = try? graph.open(.object([
        "driver": .string("qcow2"), "node-name": .string("image0"), "file": .string("file0"), "overlap-check": .string("all"),
    ])) {
        exercise(image)
        try? graph.remove("image0")
    }
    editSnapshots(file)
    _ = try? Qcow2Check.run(file: file, repair: nil)
    _ = try? Qcow2Check.run(file: file, repair: .all)
    return 0
}

/// Reads, writes, checks what it wrote, and flushes.
func exercise(_ image: BlockNode) {
    let length = image.length
    let chunk: UInt64 = 64 * 1024
    var buffer = [UInt8](repeating: 0, count: Int(chunk))
    var offset: UInt64 = 0
    while offset < min(length, 4 << 20) {
        let count = Int(min(chunk, length - offset))
        buffer.withUnsafeMutableBytes { raw in _ = try? image.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[..<count]), at: offset) }
        offset += chunk
    }
    if length > chunk {
        buffer.withUnsafeMutableBytes { raw in _ = try? image.read(into: raw, at: length - chunk) }
    }
    var statusOffset: UInt64 = 0
    for _ in 0..<256 where statusOffset < length {
        guard let extents = try? image.blockStatus(at: statusOffset, length: length - statusOffset),
              let covered = extents.map(\.length).reduce(0, { $0 &+ $1 }) as UInt64?, covered > 0 else { break }
        statusOffset &+= covered
    }
    guard !image.readOnly, length > 0 else { return }
    let pattern = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 5) }
    for target in [0, length / 2 / 512 * 512, (length - 1) / 512 * 512] {
        let count = Int(min(UInt64(pattern.count), length - target))
        let written: Bool = pattern.withUnsafeBytes { raw in
            (try? image.write(UnsafeRawBufferPointer(rebasing: raw[..<count]), at: target, fua: false)) != nil
        }
        guard written else { continue }
        var back = [UInt8](repeating: 0, count: count)
        let read: Bool = back.withUnsafeMutableBytes { raw in (try? image.read(into: raw, at: target)) != nil }
        if read && back != Array(pattern[..<count]) {
            fatalError("qcow2: \(count) bytes written at \(target) read back differently")
        }
    }
    _ = try? image.writeZeroes(at: length / 4 / 512 * 512, length: min(length / 4, 1 << 20), flags: [.mayUnmap])
    _ = try? image.discard(at: length / 8 / 512 * 512, length: min(length / 8, 1 << 20))
    _ = try? image.flush()
}

/// Lists the snapshots, takes one, reverts to the first, deletes the new one.
func editSnapshots(_ file: BlockNode) {
    guard let editor = try? Qcow2SnapshotEditor(file: file) else { return }
    let first = editor.list.first
    guard (try? editor.create(name: "fuzz")) != nil else { return }
    if let first { _ = try? editor.apply(first.id) }
    _ = try? editor.delete("fuzz")
}

/// False when the header names a backing file through a path (a '/'), which could reach any host file.
func backingNameStaysBeside(_ bytes: [UInt8]) -> Bool {
    guard bytes.count >= 20 else { return true }
    let offset = bytes[8..<16].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    let length = bytes[16..<20].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    guard offset < UInt64(bytes.count) else { return true }
    let end = Int(min(UInt64(bytes.count), offset + min(length, 4096)))
    return !bytes[Int(offset)..<end].contains(UInt8(ascii: "/"))
}

@main
enum Qcow2Fuzzer {
    static func main() { runFuzzer() }
}
