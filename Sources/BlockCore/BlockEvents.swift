import Synchronization
import LogOptionsClock

/// Which operation a quorum child failed or disagreed on (QEMU's `QuorumOpType`).
public enum QuorumOperation: String, Sendable {
    case read, write, flush
}

/// Something the block layer tells the outside world about, without knowing who listens: the
/// daemon turns these into QMP events (BlockCore does not know QMP).
public enum BlockEvent: Sendable, Equatable {
    /// A write reached past a node's write threshold (`BLOCK_WRITE_THRESHOLD`).
    case writeThreshold(nodeName: String, amountExceeded: UInt64, threshold: UInt64)
    /// A quorum node could not reach its vote threshold for a request (`QUORUM_FAILURE`);
    /// `reference` is the quorum node's name, the range is in 512-byte sectors.
    case quorumFailure(reference: String, sector: UInt64, sectors: UInt64)
    /// A quorum child failed or returned data the majority disagrees with (`QUORUM_REPORT_BAD`).
    case quorumReportBad(operation: QuorumOperation, error: String?, nodeName: String, sector: UInt64, sectors: UInt64)
    /// A format driver found its image's metadata damaged (`BLOCK_IMAGE_CORRUPTED`); `fatal` when the
    /// image is now marked corrupt.
    case imageCorrupted(nodeName: String, message: String, offset: UInt64?, size: UInt64?, fatal: Bool)
    /// A request of a device failed (`BLOCK_IO_ERROR`): what was done about it by the device's
    /// rerror/werror policy, whether the storage was full, and the error's description.
    case ioError(device: String, isWrite: Bool, action: IOErrorAction, noSpace: Bool, reason: String)
}

/// What a device did about a failed request (QEMU's `BlockErrorAction`).
public enum IOErrorAction: String, Sendable {
    /// The request completed as if it had succeeded.
    case ignore
    /// The error went to the client.
    case report
    /// The device paused; the request is retried when it resumes.
    case stop
}

/// Where a graph's nodes send their events. The daemon installs a handler; until it does (and in
/// tests) events are only logged. Sending happens on the thread that noticed the event, so a
/// handler must not call back into the node that sent it.
public final class BlockEventSink: Sendable {
    /// Receives one event.
    public typealias Handler = @Sendable (BlockEvent) -> Void
    private let handler = Mutex<Handler?>(nil)

    /// A sink that only logs until a handler is installed.
    public init() {}

    /// Installs (or with nil removes) the handler.
    public func install(_ handler: Handler?) {
        self.handler.withLock { $0 = handler }
    }

    /// Delivers an event to the handler, or logs it when there is none.
    public func send(_ event: BlockEvent) {
        if let handler = handler.withLock({ $0 }) {
            handler(event)
        } else {
            Log.info("block event \(event)")
        }
    }
}
