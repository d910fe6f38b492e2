import BlockCore
import JSON
import QAPI
import Sockets
import LogOptionsClock

extension Daemon {
    /// nbd-server-start's `addr`, decoded as QEMU decodes SocketAddressLegacy (`{"type": "unix",
    /// "data": {"path": ...}}`) with its messages; blockd also takes the flat form
    /// (`{"type": "unix", "path": ...}`), which QEMU 7.2 refuses for lack of "data".
    static func socketAddress(_ value: JSONValue) throws(QAPIError) -> ListenAddress {
        guard case .object(let members) = value else { throw .invalidParameterType("addr", expected: "object") }
        guard let typeValue = members["type"] else { throw .missingParameter("addr.type") }
        guard case .string(let type) = typeValue else { throw .invalidParameterType("addr.type", expected: "string") }
        // QEMU names the discriminator without its path here.
        guard ["inet", "unix", "vsock", "fd"].contains(type) else { throw .invalidEnumValue("type", value: type) }
        let flatKeys: Set<String> = ["path", "host", "port", "str", "cid"]
        let flat: [String: JSONValue]
        if let data = members["data"] {
            if let extra = members.keys.sorted().first(where: { $0 != "type" && $0 != "data" }) {
                throw .unexpectedParameter("addr.\(extra)")
            }
            flat = try legacyData(type, data).filter { $0.key != "mptcp" }
        } else if members.keys.contains(where: flatKeys.contains) {
            flat = members.filter { $0.key != "type" }
        } else {
            throw .missingParameter("addr.data")
        }
        if type == "vsock" { throw .generic("vsock addresses are not supported by blockd") }
        do throws(OptionError) {
            return try ListenAddress.parse(OptionReader(
                .object(flat.merging(["type": .string(type)]) { current, _ in current }), context: "nbd-server-start: addr",
                syntax: .qmp))
        } catch {
            throw error.qmp
        }
    }

    /// The members of `addr.data` for `type`, checked in QEMU's order: each member's type as it is
    /// visited, missing members, then members the type does not have.
    private static func legacyData(_ type: String, _ data: JSONValue) throws(QAPIError) -> [String: JSONValue] {
        guard case .object(let members) = data else { throw .invalidParameterType("addr.data", expected: "object") }
        let fields: [(name: String, type: String, required: Bool)]
        switch type {
        case "unix": fields = [("path", "string", true), ("abstract", "boolean", false), ("tight", "boolean", false)]
        case "inet":
            fields = [("host", "string", true), ("port", "string", true), ("numeric", "boolean", false), ("to", "integer", false),
                      ("ipv4", "boolean", false), ("ipv6", "boolean", false), ("keep-alive", "boolean", false),
                      ("mptcp", "boolean", false)]
        case "vsock": fields = [("cid", "string", true), ("port", "string", true)]
        default: fields = [("str", "string", true)]
        }
        for field in fields {
            guard let value = members[field.name] else {
                if field.required { throw .missingParameter("addr.data.\(field.name)") }
                continue
            }
            let matches: Bool
            switch (field.type, value) {
            case ("string", .string), ("boolean", .bool), ("integer", .integer): matches = true
            default: matches = false
            }
            if !matches { throw .invalidParameterType("addr.data.\(field.name)", expected: field.type) }
        }
        if let extra = members.keys.sorted().first(where: { key in !fields.contains { $0.name == key } }) {
            throw .unexpectedParameter("addr.data.\(extra)")
        }
        return members
    }
}
