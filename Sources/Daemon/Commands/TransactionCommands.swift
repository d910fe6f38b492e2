import BlockCore
import LogOptionsClock
import JSON
import QAPI

extension Daemon {
    /// `transaction`.
    func registerTransactionCommands(on table: QMPCommandTable) {
        table.register(TransactionCommand.self) { [unowned self] arguments throws(QAPIError) in try transaction(arguments) }
    }

    /// `transaction`: prepares every action (overlays created and opened, backups' copy-before-write
    /// on, dirty bitmap changes made), then, when all succeeded, switches the devices and starts the
    /// jobs; the first failure undoes every preparation, latest first, and is the command's error,
    /// so nothing of the others is left.
    func transaction(_ arguments: TransactionArguments) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            var actions: [PreparedAction] = []
            var jobsToStart: [PreparedJob] = []
            do throws(QAPIError) {
                for (index, action) in arguments.actions.enumerated() {
                    guard case .object(let members) = action, case .string(let type)? = members["type"] else {
                        throw QAPIError.missingParameter("actions[\(index)].type")
                    }
                    let data = members["data"] ?? .object([:])
                    let path = "actions[\(index)].data"
                    let reserved = Set(jobsToStart.map(\.id))
                    switch type {
                    case "blockdev-snapshot-sync":
                        actions.append(try prepareSnapshotSync(try BlockdevSnapshotSync(decoding: data, at: path)))
                    case "blockdev-snapshot":
                        actions.append(try prepareSnapshot(try BlockdevSnapshot(decoding: data, at: path)))
                    case "drive-backup":
                        let prepared = try prepareDriveBackup(try DriveBackup(decoding: data, at: path), reserved: reserved)
                        jobsToStart.append(prepared)
                        actions.append(PreparedAction(commit: {}, abort: { [unowned self] in abortPrepared(prepared) }))
                    case "blockdev-backup":
                        let prepared = try prepareBlockdevBackup(try BlockdevBackup(decoding: data, at: path), reserved: reserved)
                        jobsToStart.append(prepared)
                        actions.append(PreparedAction(commit: {}, abort: { [unowned self] in abortPrepared(prepared) }))
                    default:
                        guard let prepared = try prepareBitmapAction(type, data: data, at: path) else {
                            throw QAPIError.invalidEnumValue("type", value: type)  // QEMU names the member without its path here
                        }
                        actions.append(prepared)
                    }
                }
            } catch {
                for action in actions.reversed() { action.abort() }
                throw error
            }
            for action in actions { action.commit() }
            for prepared in jobsToStart {
                do throws(QAPIError) {
                    _ = try startJob(id: prepared.id, driver: prepared.driver, start: prepared.start)
                } catch {
                    abortPrepared(prepared)
                    Log.error("transaction: job '\(prepared.id)' could not start: \(error.description)")
                }
            }
            return QAPIEmpty()
        }
    }
}
