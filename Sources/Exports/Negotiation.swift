import BlockCore
import NBDProtocol

/// A meta context this server offers, with the id it assigns it: `base:allocation`,
/// `qemu:allocation-depth`, or a dirty bitmap as `qemu:dirty-bitmap:NAME`.
public struct MetaContext: Sendable, Equatable {
    /// The id sent in `NBD_REP_META_CONTEXT` and in block status replies.
    public let rawValue: UInt32
    /// The context's name on the wire.
    public let name: String
    /// The bitmap a `qemu:dirty-bitmap:` context reports (dirty = flag 1), else nil.
    public let bitmap: DirtyBitmap?

    /// `base:allocation`: holes and zeroes.
    public static let baseAllocation = MetaContext(rawValue: 1, name: "base:allocation", bitmap: nil)
    /// `qemu:allocation-depth`: in which layer of the backing chain each range is allocated.
    public static let allocationDepth = MetaContext(rawValue: 2, name: "qemu:allocation-depth", bitmap: nil)

    /// `qemu:dirty-bitmap:NAME` for the export's `index`th bitmap.
    public static func dirtyBitmap(_ bitmap: DirtyBitmap, index: Int) -> MetaContext {
        MetaContext(rawValue: 3 + UInt32(index), name: "qemu:dirty-bitmap:\(bitmap.name)", bitmap: bitmap)
    }

    public static func == (lhs: MetaContext, rhs: MetaContext) -> Bool { lhs.rawValue == rhs.rawValue && lhs.name == rhs.name }

    /// The contexts of `offered` a query selects: its exact name, or for LIST only a whole namespace (`base:`).
    static func matching(_ query: String, listing: Bool, in offered: [MetaContext]) -> [MetaContext] {
        offered.filter { $0.name == query || (listing && query.hasSuffix(":") && $0.name.hasPrefix(query)) }
    }
}

/// What negotiation agreed on, handed to the transmission phase.
public struct NegotiatedSession: Sendable {
    /// The export chosen.
    public let export: NBDExport
    /// Reply framing.
    public let style: ReplyStyle
    /// Meta contexts selected for this export.
    public let contexts: [MetaContext]
    /// Transmission flags sent to the client.
    public let flags: TransmissionFlags
}

/// The fixed-newstyle handshake as a state machine: options in, bytes and decisions out.
/// No sockets: the connection feeds it and carries out its actions (tested as transcripts).
public struct Negotiation {
    /// What the connection must do next.
    public enum Action {
        /// Send these bytes.
        case send([UInt8])
        /// Negotiation is over: enter transmission.
        case transmit(NegotiatedSession)
        /// Drop the connection (after sending what came before).
        case close
        /// Run the TLS handshake (after sending what came before), then go on reading options.
        case startTLS
    }

    /// Longest option data accepted; longer options are answered `NBD_REP_ERR_TOO_BIG`.
    public static let maxOptionLength = 64 * 1024

    private let exports: ExportTable
    private var style: ReplyStyle = .simple
    private var noZeroes = false
    private var selected: (export: String, contexts: [MetaContext])?
    /// TLS is configured and the client has not started it yet: only STARTTLS and ABORT are served.
    private var tlsPending: Bool
    /// TLS is configured (and, once `tlsPending` is false, running).
    private let tlsConfigured: Bool

    /// Starts a negotiation over the given exports; with `tlsRequired` the client must start TLS first.
    public init(exports: ExportTable, tlsRequired: Bool = false) {
        self.exports = exports
        self.tlsPending = tlsRequired
        self.tlsConfigured = tlsRequired
    }

    /// The greeting the server sends first.
    public static var greeting: [UInt8] {
        var writer = ByteWriter()
        writer.append(NBDMagic.initPassword)
        writer.append(NBDMagic.option)
        writer.append(HandshakeFlags([.fixedNewstyle, .noZeroes]).rawValue)
        return writer.bytes
    }

    /// Takes the client flags; false means the client sent flags this server does not know and must be dropped.
    public mutating func receiveClientFlags(_ raw: UInt32) -> Bool {
        let flags = ClientFlags(rawValue: raw)
        guard ClientFlags.known.isSuperset(of: flags) else { return false }
        noZeroes = flags.contains(.noZeroes)
        return true
    }

    /// Handles one option whose data was longer than `maxOptionLength` (and was discarded).
    public func rejectOversized(option: UInt32) -> [Action] {
        [.send(OptionReply.error(.errTooBig, option: option, message: "option data longer than \(Negotiation.maxOptionLength) bytes").encode())]
    }

    /// Handles one complete option.
    public mutating func receive(option code: UInt32, data: [UInt8]) -> [Action] {
        if tlsPending, let tlsActions = beforeTLS(code, data: data) { return tlsActions }
        guard let option = NBDOption(rawValue: code) else {
            return [reply(code, .errUnsupported, "option \(code) is not supported")]
        }
        switch option {
        case .exportName:
            // Without a way to report an error, an unknown export or one without a medium ends the session.
            guard let name = String(validating: data, as: UTF8.self), let export = exports.export(named: name),
                  let medium = export.medium else {
                return [.close]
            }
            let flags = export.transmissionFlags(style: style, medium: medium)
            var writer = ByteWriter()
            writer.append(medium.length)
            writer.append(flags.rawValue)
            if !noZeroes { writer.append(bytes: [UInt8](repeating: 0, count: 124)) }
            return [.send(writer.bytes), .transmit(session(export, flags: flags))]
        case .abort:
            return [.send(OptionReply(option: code, type: .ack).encode()), .close]
        case .list:
            guard data.isEmpty else { return [reply(code, .errInvalid, "NBD_OPT_LIST takes no data")] }
            var actions: [Action] = exports.all.map { export in
                var writer = ByteWriter()
                writer.append(UInt32(export.name.utf8.count))
                writer.append(utf8: export.name)
                writer.append(utf8: export.description ?? "")
                return .send(OptionReply(option: code, type: .server, data: writer.bytes).encode())
            }
            actions.append(.send(OptionReply(option: code, type: .ack).encode()))
            return actions
        case .startTLS:
            guard data.isEmpty else { return [reply(code, .errInvalid, "NBD_OPT_STARTTLS takes no data")] }
            if tlsConfigured { return [reply(code, .errInvalid, "TLS already enabled")] }
            return [reply(code, .errUnsupported, "TLS is not configured on this server")]
        case .info, .go:
            return exportInformation(option: option, data: data)
        case .structuredReply:
            guard data.isEmpty else { return [reply(code, .errInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")] }
            guard style != .extended else { return [reply(code, .errExtendedHeaderRequired, "extended headers are already in use")] }
            style = .structured
            return [.send(OptionReply(option: code, type: .ack).encode())]
        case .extendedHeaders:
            guard data.isEmpty else { return [reply(code, .errInvalid, "NBD_OPT_EXTENDED_HEADERS takes no data")] }
            style = .extended
            return [.send(OptionReply(option: code, type: .ack).encode())]
        case .listMetaContext, .setMetaContext:
            return metaContexts(option: option, data: data)
        case .peekExport:
            return [reply(code, .errUnsupported, "option \(code) is not supported")]
        }
    }

    /// The answer to an option while TLS is required and not started (doc/proto.md § TLS support);
    /// nil for ABORT, which is served as usual.
    private mutating func beforeTLS(_ code: UInt32, data: [UInt8]) -> [Action]? {
        switch NBDOption(rawValue: code) {
        case .abort:
            return nil
        case .exportName:
            // NBD_OPT_EXPORT_NAME cannot be answered with an error: the connection ends.
            return [.close]
        case .startTLS:
            guard data.isEmpty else { return [reply(code, .errInvalid, "NBD_OPT_STARTTLS takes no data")] }
            tlsPending = false
            return [.send(OptionReply(option: code, type: .ack).encode()), .startTLS]
        default:
            return [reply(code, .errTLSRequired, "Option 0x\(String(code, radix: 16)) not permitted before TLS")]
        }
    }

    private func reply(_ option: UInt32, _ type: OptionReplyType, _ message: String) -> Action {
        .send(OptionReply.error(type, option: option, message: message).encode())
    }

    private func session(_ export: NBDExport, flags: TransmissionFlags) -> NegotiatedSession {
        let contexts = selected.flatMap { $0.export == export.name ? $0.contexts : nil } ?? []
        return NegotiatedSession(export: export, style: style, contexts: contexts, flags: flags)
    }

    private mutating func exportInformation(option: NBDOption, data: [UInt8]) -> [Action] {
        let code = option.rawValue
        guard let request = InfoRequest.decode(data) else {
            return [reply(code, .errInvalid, "malformed \(option == .go ? "NBD_OPT_GO" : "NBD_OPT_INFO") data")]
        }
        guard let export = exports.export(named: request.exportName) else {
            return [reply(code, .errUnknown, "no export named '\(request.exportName)'")]
        }
        guard let medium = export.medium else {
            return [reply(code, .errUnknown, "export '\(export.name)' has no medium (the tray is open or the medium was removed)")]
        }
        let flags = export.transmissionFlags(style: style, medium: medium)
        var actions: [Action] = []
        var info = ByteWriter()
        info.append(InfoType.export.rawValue)
        info.append(medium.length)
        info.append(flags.rawValue)
        actions.append(.send(OptionReply(option: code, type: .info, data: info.bytes).encode()))
        if request.requests.contains(InfoType.name.rawValue) {
            var name = ByteWriter()
            name.append(InfoType.name.rawValue)
            name.append(utf8: export.name)
            actions.append(.send(OptionReply(option: code, type: .info, data: name.bytes).encode()))
        }
        if request.requests.contains(InfoType.description.rawValue), let description = export.description {
            var text = ByteWriter()
            text.append(InfoType.description.rawValue)
            text.append(utf8: description)
            actions.append(.send(OptionReply(option: code, type: .info, data: text.bytes).encode()))
        }
        var sizes = ByteWriter()
        let blockSizes = NBDExport.blockSizes(medium)
        sizes.append(InfoType.blockSize.rawValue)
        sizes.append(blockSizes.minimum)
        sizes.append(blockSizes.preferred)
        sizes.append(blockSizes.maximum)
        actions.append(.send(OptionReply(option: code, type: .info, data: sizes.bytes).encode()))
        actions.append(.send(OptionReply(option: code, type: .ack).encode()))
        if option == .go { actions.append(.transmit(session(export, flags: flags))) }
        return actions
    }

    private mutating func metaContexts(option: NBDOption, data: [UInt8]) -> [Action] {
        let code = option.rawValue
        // SET replaces the selection, even when it fails (doc/proto.md § NBD_OPT_SET_META_CONTEXT).
        if option == .setMetaContext { selected = nil }
        guard let request = MetaContextRequest.decode(data) else {
            return [reply(code, .errInvalid, "malformed meta context request")]
        }
        if option == .setMetaContext && style == .simple {
            return [reply(code, .errInvalid, "NBD_OPT_SET_META_CONTEXT needs structured replies first")]
        }
        guard let export = exports.export(named: request.exportName) else {
            return [reply(code, .errUnknown, "no export named '\(request.exportName)'")]
        }
        var chosen: [MetaContext] = []
        if request.queries.isEmpty {
            if option == .listMetaContext { chosen = export.metaContexts }
        } else {
            for query in request.queries {
                for context in MetaContext.matching(query, listing: option == .listMetaContext, in: export.metaContexts)
                where !chosen.contains(context) {
                    chosen.append(context)
                }
            }
        }
        if option == .setMetaContext { selected = (request.exportName, chosen) }
        var actions: [Action] = chosen.map { context in
            var writer = ByteWriter()
            writer.append(option == .setMetaContext ? context.rawValue : 0)
            writer.append(utf8: context.name)
            return .send(OptionReply(option: code, type: .metaContext, data: writer.bytes).encode())
        }
        actions.append(.send(OptionReply(option: code, type: .ack).encode()))
        return actions
    }
}
