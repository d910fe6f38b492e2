import BlockCore
import LogOptionsClock
import BlockDrivers
import Daemon
import FuzzSupport

/// The drivers a fuzzed `--blockdev` may open: every driver that touches no host file
/// (not `file`, `host_device`, `host_cdrom`, nor blkdebug's `config` file).
let harmlessDrivers: [String: DriverEntry] = {
    var drivers = Drivers.all
    for name in ["file", "host_device", "host_cdrom"] { drivers[name] = nil }
    if let blkdebug = drivers["blkdebug"] {
        drivers["blkdebug"] = DriverEntry(keys: blkdebug.keys.subtracting(["config"]), open: blkdebug.open)
    }
    return drivers
}()

/// keyvalue: the input is a config file (`blockd --config`: one option per line, values in the
/// key=value syntax or JSON). It is parsed as blockd parses its configuration, each line's value
/// also directly by the key=value parser, and each `blockdev` is checked and opened in a graph of
/// harmless drivers, then read from (unless asked to sleep).
@_cdecl("LLVMFuzzerTestOneInput")
public func keyValueFuzzInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let text = String(decoding: fuzzBytes(data, size), as: UTF8.self)
    for line in text.split(separator: "\n") {
        _ = try? KeyValueParser.parse(String(line), impliedKey: "driver")
        _ = OptionReader.parseSize(String(line))
    }
    guard let file = try? ConfigFile(text: text, path: "fuzz.conf") else { return 0 }
    _ = try? DaemonConfiguration(
        blockdevs: file.blockdevs, servers: file.servers, exports: file.exports, chardevs: file.chardevs, monitors: file.monitors,
        objects: file.objects)
    let graph = BlockGraph(drivers: harmlessDrivers)
    defer { graph.closeAll() }
    for item in file.blockdevs {
        guard let value = try? KeyValueParser.parse(item.text) else { continue }
        guard (try? graph.check(value)) != nil, let node = try? graph.open(value) else { continue }
        // A null device asked to sleep (latency-ns) would only measure the sleep.
        guard !value.serialized().contains("latency") else { continue }
        var buffer = [UInt8](repeating: 0, count: Int(min(node.length, 4096)))
        buffer.withUnsafeMutableBytes { raw in _ = try? node.read(into: raw, at: 0) }
    }
    return 0
}

@main
enum KeyValueFuzzer {
    static func main() { runFuzzer() }
}
