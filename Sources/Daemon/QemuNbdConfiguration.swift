import BlockCore
import JSON
import LogOptionsClock
import Sockets

/// qemu-nbd's options translated into the daemon's configuration: one node, one export, one listener.
extension QemuNbdOptions {
    /// The node name of the exported node (qemu-nbd's is generated; clients never see it).
    public static let nodeName = "qemu-nbd"
    /// The export id (qemu-nbd's own, `qemu-nbd-export`).
    public static let exportID = "qemu-nbd-export"

    /// Where to listen: `-k`, else `-b`:`-p` with qemu-nbd's defaults (0.0.0.0, 10809).
    public var listenAddress: ListenAddress {
        if let socketPath { return .unix(path: socketPath) }
        return .inet(host: bind ?? "0.0.0.0", port: port ?? QemuNbdOptions.defaultPort)
    }

    /// The definition of FILE's node without `--image-opts`: `format` (`-f`, or probed) over a file
    /// node, with the cache, aio, discard and detect-zeroes settings, and `-o` as a raw window.
    public func imageDefinition(format: String) -> OptionValue {
        var file: [String: OptionValue] = [
            "driver": .string("file"), "filename": .string(self.file ?? ""), "read-only": .bool(readOnly),
        ]
        var top: [String: OptionValue] = ["driver": .string(format), "read-only": .bool(readOnly)]
        if let cache {
            file["cache"] = .object(["direct": .bool(cache.direct), "no-flush": .bool(cache.noFlush)])
            if cache.noFlush { top["cache"] = .object(["no-flush": .bool(true)]) }
        }
        if let aio { file["aio"] = .string(aio) }
        if discardUnmap {
            file["discard"] = .string("unmap")
            top["discard"] = .string("unmap")
        }
        top["file"] = .object(file)
        return .object(top)
    }

    /// FILE read as `--image-opts` (key=value, a bare first word meaning `file=`): the node's
    /// definition, and the path of the image file when one can be named (for probing and messages).
    public func imageOptsDefinition() throws(QemuNbdError) -> (definition: [String: OptionValue], path: String?) {
        let value: OptionValue
        do {
            value = try KeyValueParser.parse(file ?? "", impliedKey: "file")
        } catch {
            throw QemuNbdError("Failed to blk_new_open '\(file ?? "")': \(error.message)")
        }
        guard case .object(var members) = value else { return ([:], nil) }
        if members["driver"] == nil && members["file"] == nil {
            throw QemuNbdError("Failed to blk_new_open '\(file ?? "")': Must specify either driver or file")
        }
        var path: String?
        if case .string(let name)? = members["file"] {
            // A string names an existing node, and qemu-nbd has none.
            throw QemuNbdError("Failed to blk_new_open '\(file ?? "")': Cannot find device='\(name)' nor node-name='\(name)'")
        } else if case .object(var child)? = members["file"] {
            if child["driver"] == nil { child["driver"] = .string("file") }
            if case .string(let name)? = child["filename"] { path = name }
            members["file"] = .object(child)
        } else if case .string(let name)? = members["filename"] {
            path = name
        }
        if readOnly { members["read-only"] = .bool(true) }
        return (members, path)
    }

    /// The top node: `image` (FILE's node), under a temporary overlay with `-s`, in a raw window with `-o`,
    /// with detect-zeroes; named `nodeName`.
    public func topDefinition(image: [String: OptionValue], format: String?, overlay: String?) -> OptionValue {
        var top = image
        if let overlay {
            var backing = image
            backing["read-only"] = .bool(true)
            top = [
                "driver": .string("qcow2"), "read-only": .bool(readOnly),
                "file": .object(["driver": .string("file"), "filename": .string(overlay), "read-only": .bool(readOnly)]),
                "backing": .object(backing),
            ]
        }
        if offset != 0 {
            if overlay == nil && format == "raw" && top["offset"] == nil {
                top["offset"] = .string(String(offset))
            } else {
                top = ["driver": .string("raw"), "read-only": .bool(readOnly), "file": .object(top), "offset": .string(String(offset))]
            }
        }
        if detectZeroes != "off" {
            top["detect-zeroes"] = .string(detectZeroes)
            if detectZeroes == "unmap" { top["discard"] = .string("unmap") }
        }
        if top["node-name"] == nil { top["node-name"] = .string(QemuNbdOptions.nodeName) }
        return .object(top)
    }

    /// The daemon configuration that serves `node` as qemu-nbd would, listening on `address`.
    public func configuration(node: OptionValue, address: ListenAddress) -> DaemonConfiguration {
        var configuration = DaemonConfiguration()
        configuration.blockdevs = [node]
        configuration.blockdevLocations = [nil]
        let name: String
        if case .object(let members) = node, case .string(let given)? = members["node-name"] { name = given } else { name = QemuNbdOptions.nodeName }
        configuration.servers = [NBDServerSpec(
            address: address, maxConnections: shared == 0 ? Int(Int32.max) : shared, handshakeSeconds: 10)]
        var export = ExportSpec(
            id: QemuNbdOptions.exportID, nodeName: name, name: exportName ?? "", description: description,
            writable: !readOnly, allocationDepth: allocationDepth)
        // qemu-nbd advertises multi-conn only when more than one client may connect.
        export.multiConn = shared != 1
        configuration.exports = [export]
        return configuration
    }
}
