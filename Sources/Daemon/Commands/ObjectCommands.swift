import BlockCore
import JSON
import QAPI
import LogOptionsClock

extension Daemon {
    /// `object-add`, `object-del`: throttle groups, as `--object throttle-group` creates them.
    func registerObjectCommands(on table: QMPCommandTable) {
        table.register(ObjectAddCommand.self) { [unowned self] arguments throws(QAPIError) in try self.objectAdd(arguments) }
        table.register(ObjectDelCommand.self) { [unowned self] arguments throws(QAPIError) in try self.objectDel(arguments) }
    }

    /// `object-add`: creates an object.
    func objectAdd(_ arguments: JSONValue) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            try addObject(arguments)
            return QAPIEmpty()
        }
    }

    /// `object-del`: deletes an object that nothing uses any more.
    func objectDel(_ arguments: ObjectDelArguments) throws(QAPIError) -> QAPIEmpty {
        try locked { () throws(QAPIError) in
            try deleteObject(arguments.id)
            return QAPIEmpty()
        }
    }

    /// Creates a throttle-group object, checked in QEMU's order: the arguments as QAPI decodes
    /// them, the id, an existing object or group of that name, the limits.
    func addObject(_ arguments: JSONValue) throws(QAPIError) {
        guard case .object(let members) = arguments else { throw .invalidParameterType("", expected: "object") }
        guard let typeValue = members["qom-type"] else { throw .missingParameter("qom-type") }
        guard case .string(let type) = typeValue else { throw .invalidParameterType("qom-type", expected: "string") }
        guard ObjectType(rawValue: type) != nil else { throw .invalidEnumValue("qom-type", value: type) }
        guard let idValue = members["id"] else { throw .missingParameter("id") }
        guard case .string(let id) = idValue else { throw .invalidParameterType("id", expected: "string") }
        if SecurityObjectSpec.types.contains(type) { return try addSecurityObject(arguments, id: id) }
        guard type == "throttle-group" else { throw .generic("Object type '\(type)' is not supported by blockd") }
        let spec: ThrottleGroupSpec
        do throws(OptionError) {
            spec = try ThrottleOptions.parseObject(arguments, syntax: .qmp)
        } catch {
            throw error.qmp
        }
        guard Daemon.isIdentifier(id) else { throw .invalidParameterValue("id", expects: "an identifier") }
        if security.contains(id) { throw .generic("attempt to add duplicate property '\(id)' to object (type 'container')") }
        if let existing = graph.throttleGroups.group(named: id) {
            throw existing.isPersistent
                ? .generic("attempt to add duplicate property '\(id)' to object (type 'container')")
                : .generic("A group with this name already exists")
        }
        _ = graph.throttleGroups.groupCreating(id, limits: spec.limits, persistent: true)
        Log.info("throttle group '\(id)' created")
    }

    /// Creates a tls-creds-* or authz-* object: properties, id, duplicates, then the files.
    func addSecurityObject(_ arguments: JSONValue, id: String) throws(QAPIError) {
        let spec: SecurityObjectSpec
        do throws(OptionError) {
            guard let parsed = try SecurityObjectSpec.parse(arguments, syntax: .qmp) else { throw OptionError("unknown object type") }
            spec = parsed
        } catch {
            throw error.qmp
        }
        guard Daemon.isIdentifier(id) else { throw .invalidParameterValue("id", expects: "an identifier") }
        if security.contains(id) || graph.throttleGroups.group(named: id) != nil {
            throw .generic("attempt to add duplicate property '\(id)' to object (type 'container')")
        }
        do throws(OptionError) {
            try security.create(spec)
        } catch {
            throw .generic(error.message)
        }
        Log.info("\(spec.type) '\(id)' created")
    }

    /// Deletes a tls-creds-* or authz-* object the NBD server does not name.
    func deleteSecurityObject(_ id: String) throws(QAPIError) {
        if let tls = server.tls, tls.credentialsID == id || tls.authorizationID == id {
            throw .generic("object '\(id)' is in use, can not be deleted")
        }
        security.remove(id)
        Log.info("object '\(id)' deleted")
    }

    /// Deletes a throttle-group object that no node or device uses.
    func deleteObject(_ id: String) throws(QAPIError) {
        if security.contains(id) { return try deleteSecurityObject(id) }
        guard let group = graph.throttleGroups.group(named: id), group.isPersistent else {
            throw .generic("object '\(id)' not found")
        }
        guard graph.throttleGroups.remove(id) else { throw .generic("object '\(id)' is in use, can not be deleted") }
        Log.info("throttle group '\(id)' deleted")
    }
}
