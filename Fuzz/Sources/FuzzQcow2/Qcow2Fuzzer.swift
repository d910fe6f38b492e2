import BlockCore
import BlockDrivers
import FuzzSupport

/// qcow2: the input is an image file, opened through the qcow2 driver (with its backing chain) the
/// way blockd opens a `--blockdev driver=qcow2`: read (data and allocation, the first 4 MiB and the
/// last 64 KiB), written a little at the start, middle and end, each write read back (it must read
/// as written), zeroed, discarded, flushed and closed. Errors are expected; traps, sanitizer reports
/// and hangs are findings. (Snapshots and the check are the qcow2-check target's.)
@_cdecl("LLVMFuzzerTestOneInput")
public func qcow2FuzzInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let (graph, _) = FuzzImages.open(fuzzBytes(data, size)) else { return 0 }
    defer { graph.closeAll() }
    guard let image = try? graph.open(.object([
        "driver": .string("qcow2"), "node-name": .string("image0"), "file": .string("file0"), "overlap-check": .string("all"),
    ])) else { return 0 }
    read(image)
    write(image)
    return 0
}

/// Reads the first 4 MiB and the last 64 KiB, and the allocation of the whole disk.
func read(_ image: BlockNode) {
    let length = image.length
    let chunk: UInt64 = 64 * 1024
    var buffer = [UInt8](repeating: 0, count: Int(chunk))
    var offset: UInt64 = 0
    while offset < min(length, 4 << 20) {
        let count = Int(min(chunk, length - offset))
        buffer.withUnsafeMutableBytes { raw in
            _ = try? image.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[..<count]), at: offset)
        }
        offset += chunk
    }
    if length > chunk {
        buffer.withUnsafeMutableBytes { raw in _ = try? image.read(into: raw, at: length - chunk) }
    }
    var statusOffset: UInt64 = 0
    for _ in 0..<256 where statusOffset < length {
        guard let extents = try? image.blockStatus(at: statusOffset, length: length - statusOffset) else { break }
        let covered = extents.reduce(UInt64(0)) { $0 &+ $1.length }
        guard covered > 0 else { break }
        statusOffset &+= covered
    }
}

/// Writes 4 KiB at the start, middle and end, reading each back; then zeroes, discards and flushes.
func write(_ image: BlockNode) {
    let length = image.length
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

@main
enum Qcow2Fuzzer {
    static func main() { runFuzzer() }
}
