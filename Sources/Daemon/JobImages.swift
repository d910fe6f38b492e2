#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock
import BlockDrivers
import JSON
import QAPI

extension Daemon {
    /// Creates the image file a drive-mirror, drive-backup or blockdev-snapshot-sync writes to
    /// (`mode=absolute-paths`): raw or qcow2 of `size` bytes, a qcow2 with `backing` in its header.
    /// An existing file is overwritten, as QEMU does.
    func createJobImage(
        _ path: String, format: String, size: UInt64, backing: (file: String, format: String)? = nil
    ) throws(QAPIError) {
        guard format == "raw" || format == "qcow2" else { throw .generic("Unknown driver '\(format)'") }
        let fd = open(path, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .generic("Could not create '\(path)': \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        if format == "raw" {
            guard ftruncate(fd, off_t(size)) == 0 else {
                throw .generic("Could not resize file: \(String(cString: strerror(errno)))")
            }
            return
        }
        let file: BlockNode
        do throws(OptionError) {
            file = try graph.open(.object(["driver": .string("file"), "filename": .string(path)]), context: "image creation", syntax: .qmp)
        } catch {
            throw error.qmp
        }
        defer { try? graph.remove(file.name) }
        var options = Qcow2CreateOptions(size: size)
        options.backingFile = backing?.file
        options.backingFormat = backing?.format
        do throws(BlockError) {
            try Qcow2Create.format(file, options: options)
            try file.flush()
        } catch {
            throw .generic("Could not create '\(path)': \(error.message)")
        }
    }

    /// Opens an image file as a new node for a job (`backing` a node name, nil for none, or the
    /// header's chain when `followBacking`).
    func openJobImage(
        _ path: String, format: String, nodeName: String?, backing: String? = nil, followBacking: Bool = false
    ) throws(QAPIError) -> BlockNode {
        var options: [String: JSONValue] = [
            "driver": .string(format), "file": .object(["driver": .string("file"), "filename": .string(path)]),
        ]
        if let nodeName { options["node-name"] = .string(nodeName) }
        if format == "qcow2" && !followBacking { options["backing"] = backing.map { JSONValue.string($0) } ?? JSONValue.null }
        guard access(path, F_OK) == 0 else { throw .generic("Could not open '\(path)': No such file or directory") }
        do throws(OptionError) {
            return try graph.open(.object(options), context: "job target", syntax: .qmp)
        } catch {
            throw error.qmp
        }
    }

    /// The format name of a node as drive-mirror's default target format (the format layer's driver).
    func imageFormat(of node: BlockNode) -> String {
        node.driver.driverName == "qcow2" ? "qcow2" : "raw"
    }

    /// The backing file of a qcow2 node (its header's name and format), if any.
    func backingOf(_ node: BlockNode) -> (file: String, format: String)? {
        guard let backing = node.children.first(where: { $0.role == "backing" })?.node else { return nil }
        let file = backing.children.first { $0.role == "file" }?.node.driver.filename ?? backing.driver.filename
        return (file, imageFormat(of: backing))
    }
}
