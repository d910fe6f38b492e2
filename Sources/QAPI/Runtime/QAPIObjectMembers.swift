import JSON

extension QAPIIntrospection {
    /// The member names of every object type, by type name, with the members of its bases (as
    /// introspection lists them): what a struct or a union branch accepts, known from the schema alone.
    public static let objectMembers: [String: [String]] = {
        var members: [String: [String]] = [:]
        for entry in entries {
            guard case .object(let info) = entry, info["meta-type"] == .string("object"),
                  case .string(let name)? = info["name"], case .array(let list)? = info["members"] else { continue }
            members[name] = list.compactMap { member in
                guard case .object(let fields) = member, case .string(let memberName)? = fields["name"] else { return nil }
                return memberName
            }
        }
        return members
    }()

    /// The member names of the branch `tag` of the flat union `union` (e.g. "qcow2" of "BlockdevOptions"),
    /// without the members every branch shares; nil when the union has no such branch.
    public static func members(ofBranch tag: String, of union: String) -> [String]? {
        for entry in entries {
            guard case .object(let info) = entry, info["name"] == .string(union),
                  case .array(let variants)? = info["variants"] else { continue }
            for variant in variants {
                guard case .object(let fields) = variant, fields["case"] == .string(tag),
                      case .string(let type)? = fields["type"] else { continue }
                return objectMembers[type]
            }
            return nil
        }
        return nil
    }
}
