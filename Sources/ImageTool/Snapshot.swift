#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import BlockDrivers
import JSON

/// `blockimg snapshot`: lists, creates, applies and deletes a qcow2 image's internal snapshots.
public struct SnapshotCommand: Sendable {
    /// What to do.
    public enum Action: Sendable, Equatable {
        /// `-l`.
        case list
        /// `-c NAME`.
        case create(String)
        /// `-a NAME`.
        case apply(String)
        /// `-d NAME`.
        case delete(String)
    }

    /// The image.
    public var path: String
    /// `-f`, when given.
    public var format: String?
    /// The action.
    public var action: Action

    /// Describes a snapshot request.
    public init(path: String, format: String?, action: Action) {
        self.path = path
        self.format = format
        self.action = action
    }

    /// Performs the action; returns the listing for `-l`, else nothing.
    public func run() throws(ImageToolError) -> String? {
        let chosen = try ImageFiles.format(format, of: path)
        guard chosen == "qcow2" else { throw ImageToolError("Format '\(chosen)' does not support internal snapshots") }
        if action == .list {
            let image = try ImageFiles.open(path, format: "qcow2", readOnly: true, withBacking: false)
            defer { image.close() }
            let snapshots = try Self.snapshots(of: image)
            return snapshots.isEmpty ? nil : Self.table(snapshots)
        }
        let graph = BlockGraph(drivers: Drivers.all)
        defer { graph.closeAll() }
        let file: BlockNode
        do {
            file = try graph.open(.object(["driver": .string("file"), "filename": .string(path)]), context: path)
        } catch {
            throw ImageToolError("Could not open '\(path)': \(error.message)")
        }
        do {
            let editor = try Qcow2SnapshotEditor(file: file)
            switch action {
            case .create(let name):
                do { try editor.create(name: name) } catch { throw ImageToolError("Could not create snapshot '\(name)': \(error.message)") }
            case .apply(let name):
                do { try editor.apply(name) } catch { throw ImageToolError("Could not apply snapshot '\(name)': \(error.message)") }
            case .delete(let name):
                do { try editor.delete(name) } catch { throw ImageToolError("Could not delete snapshot '\(name)': \(error.message)") }
            case .list:
                break
            }
            try file.flush()
        } catch let error as ImageToolError {
            throw error
        } catch let error as BlockError {
            throw ImageToolError("Could not open '\(path)': \(error.message)")
        } catch {
            throw ImageToolError("\(path): \(error)")
        }
        return nil
    }

    /// The snapshots of an opened qcow2 image.
    static func snapshots(of image: OpenedImage) throws(ImageToolError) -> [Qcow2Snapshot] {
        guard let header = image.qcow2Header else { return [] }
        do { return try Qcow2Snapshots.list(file: image.file, header: header) } catch { throw ImageToolError(error, image.path) }
    }

    /// qemu-img's snapshot table: a title and one row per snapshot.
    static func table(_ snapshots: [Qcow2Snapshot]) -> String {
        func left(_ text: String, _ width: Int) -> String { text.padded(to: width) }
        func right(_ text: String, _ width: Int) -> String {
            text.count >= width ? text : String(repeating: " ", count: width - text.count) + text
        }
        var lines = ["Snapshot list:", left("ID", 10) + left("TAG", 17) + right("VM SIZE", 8) + right("DATE", 20) + right("VM CLOCK", 13) + right("ICOUNT", 11)]
        for snapshot in snapshots {
            var seconds = time_t(snapshot.dateSeconds)
            var parts = tm()
            localtime_r(&seconds, &parts)
            var buffer = [CChar](repeating: 0, count: 32)
            _ = strftime(&buffer, buffer.count, "%Y-%m-%d %H:%M:%S", &parts)
            let date = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let clock = snapshot.vmClockNanoseconds
            let milliseconds = clock / 1_000_000
            let clockText = two(milliseconds / 3_600_000) + ":" + two(milliseconds / 60_000 % 60) + ":" + two(milliseconds / 1000 % 60)
                + "." + three(milliseconds % 1000)
            let icount = snapshot.icount.map { $0 == UInt64.max ? "" : String($0) } ?? ""
            lines.append(left(snapshot.id, 9) + " " + left(snapshot.name, 16) + " " + right(Sizes.human(snapshot.vmStateSize), 8)
                + right(date, 20) + right(clockText, 13) + right(icount, 11))
        }
        return lines.joined(separator: "\n")
    }

    /// SnapshotInfo as `info --output=json` lists it.
    static func info(_ snapshot: Qcow2Snapshot) -> JSONValue {
        var object: [String: JSONValue] = [
            "id": .string(snapshot.id), "name": .string(snapshot.name),
            "vm-state-size": .integer(Int64(snapshot.vmStateSize)),
            "date-sec": .integer(Int64(snapshot.dateSeconds)), "date-nsec": .integer(Int64(snapshot.dateNanoseconds)),
            "vm-clock-sec": .integer(Int64(snapshot.vmClockNanoseconds / 1_000_000_000)),
            "vm-clock-nsec": .integer(Int64(snapshot.vmClockNanoseconds % 1_000_000_000)),
        ]
        if let icount = snapshot.icount, icount != UInt64.max { object["icount"] = .integer(Int64(icount)) }
        return .object(object)
    }

    private static func two(_ value: UInt64) -> String { value < 10 ? "0\(value)" : String(value) }
    private static func three(_ value: UInt64) -> String { String(repeating: "0", count: 3 - min(3, String(value).count)) + String(value) }
}
