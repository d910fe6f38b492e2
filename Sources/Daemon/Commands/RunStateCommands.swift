import BlockCore
import QAPI
import LogOptionsClock

extension Daemon {
    /// `stop` and `cont`: pause every device's requests, and resume them (with the devices an I/O
    /// error paused, whose failed requests are retried).
    func registerRunStateCommands(on table: QMPCommandTable) {
        table.register(StopCommand.self) { [unowned self] _ throws(QAPIError) in try self.stopRunState() }
        table.register(ContCommand.self) { [unowned self] _ throws(QAPIError) in try self.cont() }
    }

    /// `stop`: switches the server to the stopped run state and sends STOP.
    func stopRunState() throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            guard !runStopped else { return QAPIEmpty() }
            runStopped = true
            for device in allDevices() { device.backend.pause(.stopped) }
            Log.info("stopped: every device's requests wait until 'cont'")
            monitor?.emit(StopEvent())
            return QAPIEmpty()
        }
    }

    /// `cont`: switches the server back to the running state after 'stop'.
    func cont() throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            let views = allDevices()
            let errorPaused = views.filter { $0.backend.pauseReasons.contains(.ioError) }
            guard runStopped || !errorPaused.isEmpty else { return QAPIEmpty() }
            runStopped = false
            for device in views {
                device.backend.resetIOStatus()
                device.backend.resume([.stopped, .ioError])
            }
            Log.info("running: resumed \(errorPaused.isEmpty ? "every device" : errorPaused.map { "'\($0.name)'" }.joined(separator: ", "))")
            monitor?.emit(ResumeEvent())
            return QAPIEmpty()
        }
    }

    /// A device's io-status as query-block reports it.
    static func ioStatus(_ status: DeviceIOStatus) -> BlockDeviceIoStatus {
        switch status {
        case .ok: return .ok
        case .failed: return .failed
        case .noSpace: return .nospace
        }
    }
}
