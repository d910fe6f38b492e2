import Exports
import QAPI

extension Daemon {
    /// `x-blockd-query-nbd-clients` (tls.json).
    func registerTLSCommands(on table: QMPCommandTable) {
        table.register(XBlockdQueryNbdClientsCommand.self) { [unowned self] _ throws(QAPIError) in nbdClients() }
    }

    /// `x-blockd-query-nbd-clients`: every connection, with its TLS cipher and identity.
    func nbdClients() -> [BlockdNbdClientInfo] {
        server.clients.map {
            BlockdNbdClientInfo(peer: $0.peer, export: $0.exportID, tls: $0.tls?.negotiated, tlsIdentity: $0.tls?.identity, kernelTls: $0.tls?.kernel)
        }
    }
}
