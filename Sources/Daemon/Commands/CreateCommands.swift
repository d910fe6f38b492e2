import BlockCore
import BlockDrivers
import JSON
import Jobs
import QAPI

extension Daemon {
    /// `blockdev-create`, and `x-blockdev-create` (its QEMU 2.12 name).
    func registerCreateCommands(on table: QMPCommandTable) {
        table.register(BlockdevCreateCommand.self) { [unowned self] arguments throws(QAPIError) in
            try blockdevCreate(jobID: arguments.jobId, options: arguments.options)
        }
        table.register(XBlockdevCreateCommand.self) { [unowned self] arguments throws(QAPIError) in
            try blockdevCreate(jobID: arguments.jobId, options: arguments.options)
        }
    }

    /// Starts a create job (manual dismiss, JOB_STATUS_CHANGE events only). Malformed options are
    /// refused here; what depends on the graph (the node, permissions, sizes) fails the job.
    func blockdevCreate(jobID: String, options: JSONValue) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            guard case .object(var members) = options else { throw .invalidParameterType("options", expected: "object") }
            guard let driverValue = members.removeValue(forKey: "driver") else { throw .missingParameter("driver") }
            guard case .string(let driver) = driverValue else { throw .invalidParameterType("driver", expected: "string") }
            guard BlockdevDriver(rawValue: driver) != nil else { throw .invalidEnumValue("driver", value: driver) }
            let work: CreateJob.Work
            switch driver {
            case "file":
                let file = try BlockdevCreateOptionsFile(decoding: .object(members), at: "options")
                work = .file(path: file.filename, size: file.size, preallocation: file.preallocation?.rawValue ?? "off")
            case "qcow2":
                work = try qcow2CreateWork(try BlockdevCreateOptionsQcow2(decoding: .object(members), at: "options"))
            default:
                // QEMU names the first member its QDict iterates.
                var dict = QDict()
                for key in members.keys.sorted() { dict.put(key, .null) }
                if let key = dict.keys.first { throw .unexpectedParameter("options.\(key)") }
                throw .generic("Driver '\(driver)' does not support blockdev-create")
            }
            guard Job.isValidID(jobID) else { throw .generic("Invalid job ID '\(jobID)'") }
            if jobs.job(jobID) != nil { throw .generic("Job ID '\(jobID)' already in use") }
            _ = try startJob(id: jobID, driver: CreateJob(work), start: JobStart(id: jobID, device: "", autoDismiss: false))
            return QAPIEmpty()
        }
    }

    /// The qcow2 settings, or the failure the job will report (QEMU's messages and order).
    private func qcow2CreateWork(_ options: BlockdevCreateOptionsQcow2) throws(QAPIError) -> CreateJob.Work {
        guard case .string(let name) = options.file else {
            return .failure("blockd's blockdev-create takes 'file' as the name of an existing node")
        }
        guard let node = graph.node(named: name) ?? devices[name]?.medium else {
            return .failure("Cannot find device='\(name)' nor node-name='\(name)'")
        }
        if let conflict = permissionConflict(on: node, needing: [.write, .resize]) { return .failure(conflict.description) }
        do throws(QAPIError) {
            try checkNotBusy([node])
        } catch {
            return .failure(error.description)
        }
        guard options.size % 512 == 0 else { return .failure("Image size must be a multiple of 512 bytes") }
        if options.dataFile != nil || options.dataFileRaw != nil {
            return .failure("External data files are not supported by blockd")
        }
        if options.encrypt != nil { return .failure("Encrypted qcow2 images are not supported by blockd") }
        if options.extendedL2 == true { return .failure("Extended L2 entries (subclusters) are not supported by blockd") }
        if let type = options.compressionType, type != "zlib" {
            return .failure("Compression type '\(type)' is not supported by blockd (zlib only)")
        }
        var settings = Qcow2CreateOptions(size: options.size)
        if let cluster = options.clusterSize { settings.clusterSize = Int(clamping: cluster) }
        if options.version == .v2 { settings.version = 2 }
        if let bits = options.refcountBits { settings.refcountBits = Int(clamping: bits) }
        settings.lazyRefcounts = options.lazyRefcounts ?? false
        settings.backingFile = options.backingFile
        settings.backingFormat = options.backingFmt
        if options.backingFmt != nil && options.backingFile == nil {
            return .failure("Backing format cannot be used without backing file")
        }
        if let mode = options.preallocation {
            guard let preallocation = Qcow2Preallocation(rawValue: mode.rawValue) else {
                return .failure("Unsupported preallocation mode '\(mode.rawValue)'")
            }
            if preallocation != .off && options.backingFile != nil {
                return .failure("Backing file and preallocation can only be used at the same time if extended_l2 is on")
            }
            settings.preallocation = preallocation
        }
        do {
            try settings.validate()
        } catch {
            return .failure(error.message)
        }
        return .qcow2(node: node, options: settings)
    }
}
