#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import BlockDrivers
import JSON

/// `blockimg check`: the qcow2 consistency check (ImageCheck), optionally repairing leaks or all refcount errors.
public struct CheckCommand: Sendable {
    /// The image.
    public var path: String
    /// `-f`, when given.
    public var format: String?
    /// `-r leaks|all`, when given.
    public var repair: String?

    /// Describes a check request.
    public init(path: String, format: String?, repair: String?) {
        self.path = path
        self.format = format
        self.repair = repair
    }

    /// The outcome: what to print and qemu-img's exit code (0 clean, 1 check failed, 2 corruptions, 3 leaks only).
    public struct Outcome: Sendable {
        /// The report after any repair.
        public var report: Qcow2CheckReport
        /// The counts repaired, when a repair changed anything.
        public var repaired: (leaks: Int, corruptions: Int)?
        /// The image's format.
        public var format: String
        /// The exit code.
        public var exitCode: Int32 {
            if report.checkErrors > 0 { return 1 }
            if report.corruptions > 0 { return 2 }
            if report.leaks > 0 { return 3 }
            return 0
        }
    }

    /// Runs the check (and repair); raw images answer with exit code 63 as qemu-img's do.
    public func run() throws(ImageToolError) -> Outcome {
        var mode: Qcow2RepairMode?
        if let repair {
            guard let value = Qcow2RepairMode(rawValue: repair) else {
                throw ImageToolError("Unknown option value for -r (expecting 'leaks' or 'all'): \(repair)")
            }
            mode = value
        }
        let chosen = try ImageFiles.format(format, of: path)
        let registered = ImageFormats.named(chosen)?.check
        guard chosen == "qcow2" || registered != nil else {
            throw ImageToolError("This image format does not support checks", exitCode: 63)
        }
        let graph = BlockGraph(drivers: Drivers.all)
        defer { graph.closeAll() }
        let file: BlockNode
        do {
            file = try graph.open(.object([
                "driver": .string("file"), "filename": .string(path), "read-only": .bool(mode == nil),
            ]), context: path)
        } catch {
            throw ImageToolError("Could not open '\(path)': \(error.message)")
        }
        do {
            let report: Qcow2CheckReport
            if let registered { report = try registered(file, mode) } else { report = try Qcow2Check.run(file: file, repair: mode) }
            try file.flush()
            let changed = report.leaksFixed + report.corruptionsFixed > 0
            return Outcome(report: report, repaired: changed ? (report.leaksFixed, report.corruptionsFixed) : nil, format: chosen)
        } catch {
            // A format that checks but cannot repair answers -r as qemu-img does (vdi).
            if error.errno == ENOTSUP && mode != nil { throw ImageToolError(error.message, exitCode: 63) }
            throw ImageToolError("Check failed: \(error.message)")
        }
    }

    /// The human report, as qemu-img prints it.
    public static func human(_ outcome: Outcome) -> String {
        let report = outcome.report
        var text = ""
        if let repaired = outcome.repaired {
            text += "The following inconsistencies were found and repaired:\n\n"
                + "    \(repaired.leaks) leaked clusters\n    \(repaired.corruptions) corruptions\n\n"
                + "Double checking the fixed image now...\n"
        }
        if report.corruptions == 0 && report.leaks == 0 && report.checkErrors == 0 {
            text += "No errors were found on the image.\n"
        } else {
            if report.corruptions > 0 {
                text += "\n\(report.corruptions) errors were found on the image.\n"
                    + "Data may be corrupted, or further writes to the image may corrupt it.\n"
            }
            if report.leaks > 0 {
                text += "\n\(report.leaks) leaked clusters were found on the image.\n"
                    + "This means waste of disk space, but no harm to data.\n"
            }
            if report.checkErrors > 0 { text += "\n\(report.checkErrors) internal errors have occurred during the check.\n" }
        }
        if report.totalClusters > 0 && report.allocatedClusters > 0 {
            let allocated = Double(report.allocatedClusters)
            text += "\(report.allocatedClusters)/\(report.totalClusters) = "
                + percent(allocated * 100 / Double(report.totalClusters)) + " allocated, "
                + percent(Double(report.fragmentedClusters) * 100 / allocated) + " fragmented, "
                + percent(Double(report.compressedClusters) * 100 / allocated) + " compressed clusters\n"
        }
        if report.imageEndOffset > 0 { text += "Image end offset: \(report.imageEndOffset)\n" }
        return text
    }

    /// ImageCheck as JSON; counters that are zero are left out, as qemu-img leaves them out.
    public static func json(_ outcome: Outcome, filename: String) -> String {
        let report = outcome.report
        var object: [String: JSONValue] = [
            "filename": .string(filename), "format": .string(outcome.format), "check-errors": .integer(Int64(report.checkErrors)),
        ]
        let optional: [(String, UInt64)] = [
            ("corruptions", UInt64(report.corruptions)), ("leaks", UInt64(report.leaks)),
            ("corruptions-fixed", UInt64(outcome.repaired?.corruptions ?? 0)), ("leaks-fixed", UInt64(outcome.repaired?.leaks ?? 0)),
            ("image-end-offset", report.imageEndOffset), ("total-clusters", report.totalClusters),
            ("allocated-clusters", report.allocatedClusters), ("fragmented-clusters", report.fragmentedClusters),
            ("compressed-clusters", report.compressedClusters),
        ]
        for (key, value) in optional where value != 0 { object[key] = .integer(Int64(value)) }
        return JSONValue.object(object).prettyPrinted()
    }

    private static func percent(_ value: Double) -> String {
        CFormat.string("%0.2f", value) + "%"
    }
}
