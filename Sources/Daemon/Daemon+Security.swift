import BlockCore
import LogOptionsClock
import Exports
import Sockets

extension Daemon {
    /// Creates the `--object tls-creds-*` and `authz-*` objects, re-reading the files of those that
    /// exist (a reload), and removes those of `removing` that are gone from `specs`.
    func applySecurityObjects(_ specs: [SecurityObjectSpec], removing old: [SecurityObjectSpec] = []) throws(OptionError) {
        for spec in specs {
            do throws(OptionError) {
                try security.create(spec)
            } catch {
                throw OptionError("--object \(spec.type) '\(spec.id)': \(error.message)")
            }
            Log.info("\(spec.type) '\(spec.id)' \(old.contains { $0.id == spec.id } ? "reloaded" : "created")")
        }
        for spec in old where !specs.contains(where: { $0.id == spec.id }) { security.remove(spec.id) }
    }

    /// Sets the NBD server's TLS from the `--nbd-server`s' tls-creds and tls-authz (TLS applies to
    /// every listener, so they must all name the same).
    func applyServerTLS(_ servers: [NBDServerSpec]) throws(OptionError) {
        guard let spec = servers.first(where: { $0.tlsCreds != nil }) else {
            server.setTLS(nil)
            return
        }
        guard servers.allSatisfy({ $0.tlsCreds == spec.tlsCreds && $0.tlsAuthz == spec.tlsAuthz }) else {
            throw OptionError("--nbd-server: every --nbd-server must name the same tls-creds and tls-authz (TLS applies to the whole server)")
        }
        guard let credentials = spec.tlsCreds else {
            server.setTLS(nil)
            return
        }
        do throws(OptionError) {
            server.setTLS(try security.serverSettings(credentials: credentials, authorization: spec.tlsAuthz))
        } catch {
            throw OptionError("--nbd-server: \(error.message)")
        }
        Log.info("NBD server requires TLS (tls-creds '\(credentials)'\(spec.tlsAuthz.map { ", tls-authz '\($0)'" } ?? ""); \(TLSCredentials.kernelTLSAvailable ? "kernel TLS" : "kernel TLS not available (no tls module): userspace TLS"))")
    }
}
