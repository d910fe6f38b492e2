import BlockCore
import BlockDrivers
import JSON
import QAPI
import LogOptionsClock

extension Daemon {
    /// The live node policies: `block-set-write-threshold`, `x-blockd-set-detect-zeroes`,
    /// `x-blockd-blkdebug-set-rules`; and the graph's events, sent to the monitor's clients.
    func registerPolicyCommands(on table: QMPCommandTable) {
        graph.events.install { [weak self] event in self?.emitBlockEvent(event) }
        table.register(BlockSetWriteThresholdCommand.self) { [unowned self] arguments throws(QAPIError) in try self.blockSetWriteThreshold(arguments) }
        table.register(XBlockdSetDetectZeroesCommand.self) { [unowned self] arguments throws(QAPIError) in try self.xBlockdSetDetectZeroes(arguments) }
        table.register(XBlockdBlkdebugSetRulesCommand.self) { [unowned self] arguments throws(QAPIError) in try self.xBlockdBlkdebugSetRules(arguments) }
    }

    /// `block-set-write-threshold`: sets the write threshold of a node.
    func blockSetWriteThreshold(_ arguments: BlockSetWriteThresholdArguments) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            try policyNode(arguments.nodeName).setWriteThreshold(arguments.writeThreshold)
            Log.info("node '\(arguments.nodeName)': write threshold \(arguments.writeThreshold)")
            return QAPIEmpty()
        }
    }

    /// `x-blockd-set-detect-zeroes`: changes the detect-zeroes setting of a node while it is in use.
    func xBlockdSetDetectZeroes(_ arguments: XBlockdSetDetectZeroesArguments) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            let node = try policyNode(arguments.nodeName)
            do throws(BlockError) {
                try node.setDetectZeroes(DetectZeroes(name: arguments.detectZeroes.rawValue)!)
            } catch {
                throw .generic(error.message)
            }
            Log.info("node '\(node.name)': detect-zeroes=\(arguments.detectZeroes.rawValue)")
            return QAPIEmpty()
        }
    }

    /// `x-blockd-blkdebug-set-rules`: replaces the rules of a blkdebug node while it is in use.
    func xBlockdBlkdebugSetRules(_ arguments: XBlockdBlkdebugSetRulesArguments) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            let node = try policyNode(arguments.nodeName)
            guard let blkdebug = node.driver as? BlkdebugDriver else {
                throw .generic("Node '\(node.name)' is not a blkdebug node")
            }
            // The schema checked the arguments; the driver's own reader makes them rules.
            var members: [String: JSONValue] = [:]
            if let rules = arguments.injectError { members["inject-error"] = rules.json }
            if let rules = arguments.setState { members["set-state"] = rules.json }
            let rules: BlkdebugRuleSet
            do throws(OptionError) {
                rules = try BlkdebugRuleSet(options: OptionReader(.object(members), context: "x-blockd-blkdebug-set-rules", syntax: .qmp))
            } catch {
                throw error.qmp
            }
            blkdebug.replaceRules(rules, state: arguments.state)
            Log.info("node '\(node.name)': \(rules.injectErrors.count) inject-error and \(rules.setStates.count) set-state rules")
            return QAPIEmpty()
        }
    }

    /// The node named `name`, or QEMU's GenericError for a node these commands cannot find.
    private func policyNode(_ name: String) throws(QAPIError) -> BlockNode {
        guard let node = graph.node(named: name) else { throw .generic("Device '\(name)' not found") }
        return node
    }

    /// Sends a block layer event to the monitor's clients as its QMP event.
    func emitBlockEvent(_ event: BlockEvent) {
        switch event {
        case .writeThreshold(let node, let amount, let threshold):
            monitor?.emit(BlockWriteThresholdEvent(nodeName: node, amountExceeded: amount, writeThreshold: threshold))
        case .quorumFailure(let reference, let sector, let sectors):
            monitor?.emit(QuorumFailureEvent(
                reference: reference, sectorNum: Int64(clamping: sector), sectorsCount: Int64(clamping: sectors)))
        case .quorumReportBad(let operation, let error, let node, let sector, let sectors):
            monitor?.emit(QuorumReportBadEvent(
                type: QuorumOpType(rawValue: operation.rawValue)!, error: error, nodeName: node,
                sectorNum: Int64(clamping: sector), sectorsCount: Int64(clamping: sectors)))
        case .imageCorrupted(let node, let message, let offset, let size, let fatal):
            let device = devices.first { $0.value.medium?.name == node }?.key ?? ""
            monitor?.emit(BlockImageCorruptedEvent(
                device: device, nodeName: node, msg: message, offset: offset.map { Int64(clamping: $0) },
                size: size.map { Int64(clamping: $0) }, fatal: fatal))
        case .ioError(let device, let isWrite, let action, let noSpace, let reason):
            monitor?.emit(BlockIoErrorEvent(
                device: device, operation: isWrite ? .write : .read, action: BlockErrorAction(rawValue: action.rawValue)!,
                nospace: noSpace, reason: reason))
        }
    }
}
