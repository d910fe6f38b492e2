import BlockCore
import Sockets
import NBDProtocol
import LogOptionsClock

/// The transmission phase of one connection: reads requests in batches, has them executed on this
/// thread, and sends the replies of a batch with one system call. The input is a `RequestInput`,
/// execution a `RequestExecutor`, the replies of a batch a `ReplyBuffer`.
final class Transmission {
    /// Why the phase ended.
    enum Ending {
        /// The client sent `NBD_CMD_DISC`.
        case disconnect
        /// The client closed the socket (or the server shut it for draining).
        case closed
        /// The client broke the protocol (bad magic, oversized payload); the stream cannot be resynchronised.
        case protocolError(String)
    }

    /// Largest write payload read and dropped to keep the stream in sync after `EOVERFLOW`.
    static let maxDiscardedPayload: UInt64 = 64 << 20

    let input: RequestInput
    let requests: RequestExecutor
    let style: ReplyStyle

    init(io: SocketIO, peer: String, session: NegotiatedSession, engineFactory: IOBatchEngineFactory?) {
        self.input = RequestInput(io: io)
        self.requests = RequestExecutor(io: io, peer: peer, session: session, engineFactory: engineFactory)
        self.style = session.style
    }

    /// Serves requests until the client disconnects or breaks the protocol.
    func run() -> Ending {
        let replies = requests.replies
        while true {
            switch RequestHeader.decode(input.unread, extended: style == .extended) {
            case .needMore:
                // Replies go out before blocking, and before the input (which holds the payloads of
                // queued writes) moves; engine I/O keeps running while the rest of a request arrives.
                requests.prepareToReceive(moreIsComing: input.hasUnread || input.isReadable)
                guard input.receiveMore() else { return .closed }
            case .badMagic(let magic):
                requests.flushOutput()
                return .protocolError("bad request magic 0x\(String(magic, radix: 16))")
            case .header(let header, let size):
                input.consume(size)
                if let ending = handle(header) {
                    requests.flushOutput()
                    return ending
                }
                if replies.isFull { requests.flushOutput() }
            }
        }
    }

    /// Takes one request off the stream (with its payload) and has it run; returns an ending when
    /// the connection must stop.
    private func handle(_ header: RequestHeader) -> Ending? {
        requests.followMedium()
        if header.type == NBDCommand.write.rawValue {
            if header.length > UInt64(NBDExport.maxPayload) {
                // Over the advertised maximum: EINVAL after dropping the payload to stay in sync
                // (doc/proto.md § Block size constraints); with extended headers, or when the payload
                // is too large to be worth reading, a hard disconnect.
                guard style != .extended, header.length <= Transmission.maxDiscardedPayload else {
                    return .protocolError("write payload of \(header.length) bytes over the \(NBDExport.maxPayload)-byte maximum")
                }
                guard input.skip(header.length) else { return .closed }
                requests.refuse(header, error: NBDError.invalid.rawValue, kind: .write)
                return nil
            }
            let count = Int(header.length)
            guard let payload = input.bufferedPayload(count) ?? receivePayload(count) else { return .closed }
            requests.write(header, payload, queueable: !input.isLargePayload(payload))
            return nil
        }
        if style == .extended && header.commandFlags.contains(.payloadLength) {
            // A payload on a command that takes none: read past it, then refuse the command.
            guard header.length <= UInt64(NBDExport.maxPayload) else {
                return .protocolError("payload of \(header.length) bytes on command \(header.type)")
            }
            guard input.skip(header.length) else { return .closed }
            requests.refuse(header, error: NBDError.invalid.rawValue, kind: nil)
            return nil
        }
        return requests.perform(header) ? .disconnect : nil
    }

    /// A payload that has not fully arrived: the batch is completed and its replies sent first (the
    /// input may move), unless its engine I/O can keep running while the payload arrives (the client
    /// is sending it, so it does not wait for replies first).
    @inline(never)
    private func receivePayload(_ count: Int) -> UnsafeRawBufferPointer? {
        requests.prepareToReceive(moreIsComing: true)
        return input.receivePayload(count)
    }
}
