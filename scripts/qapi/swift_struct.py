"""A QAPI object as a Swift struct: members, memberwise init, JSON decoding and encoding.

Types, command arguments and events all use it.
"""

from .swift_file import swift_doc
from .swift_names import escape_ident, member_swift, swift_string, swift_type
from .text import paragraphs


def render_struct(swift_name, members, doc_lines, conformances, extra=(), boxed=frozenset()):
    """A struct with memberwise init, JSON decoding and encoding.

    Members named in `boxed` are stored in a QAPIIndirect box (their type
    contains this struct) and exposed through computed properties."""
    out = swift_doc(doc_lines)
    out.append(f"public struct {swift_name}: {', '.join(conformances)} {{")
    out.extend(extra)
    if extra:
        out.append("")
    out += properties(members, boxed)
    out += memberwise_init(members, boxed)
    out.append("")
    out += decoding_init(members, boxed)
    out.append("")
    out += encoding(members)
    out.append("}")
    return out


def properties(members, boxed):
    out = []
    for m in members:
        out.extend(swift_doc(paragraphs(m.doc), "    ", capital=True))
        opt = "?" if m.optional else ""
        s = escape_ident(member_swift(m.name))
        if m.name in boxed:
            storage = "_" + member_swift(m.name)
            t = swift_type(m.type)
            out.append(f"    public var {s}: {t}{opt} {{")
            if m.optional:
                out.append(f"        get {{ {storage}?.value }}")
                out.append(f"        set {{ {storage} = newValue.map {{ QAPIIndirect($0) }} }}")
            else:
                out.append(f"        get {{ {storage}.value }}")
                out.append(f"        set {{ {storage} = QAPIIndirect(newValue) }}")
            out.append("    }")
            out.append(f"    private var {storage}: QAPIIndirect<{t}>{opt}")
        else:
            out.append(f"    public var {s}: {swift_type(m.type)}{opt}")
    if members:
        out.append("")
    return out


def memberwise_init(members, boxed):
    if not members:
        return ["    /// Creates the value.", "    public init() {}"]
    out = ["    /// Creates a value from its members."]
    params = [f"{escape_ident(member_swift(m.name))}: {swift_type(m.type)}{'? = nil' if m.optional else ''}"
              for m in members]
    one_line = f"    public init({', '.join(params)}) {{"
    if len(one_line) <= 110:
        out.append(one_line)
    else:
        out.append("    public init(")
        for i, p in enumerate(params):
            out.append(f"        {p}{',' if i + 1 < len(params) else ''}")
        out.append("    ) {")
    for m in members:
        s = escape_ident(member_swift(m.name))
        if m.name in boxed:
            value = f"{s}.map {{ QAPIIndirect($0) }}" if m.optional else f"QAPIIndirect({s})"
            out.append(f"        self._{member_swift(m.name)} = {value}")
        else:
            out.append(f"        self.{s} = {s}")
    out.append("    }")
    return out


def decoding_init(members, boxed):
    out = ["    public init(decoding value: JSONValue, at path: String) throws(QAPIError) {"]
    if members:
        out.append("        var object = try QAPIObjectReader(value, at: path)")
        for m in members:
            method = "optional" if m.optional else "required"
            if m.name in boxed:
                decoded = f"try object.{method}({swift_string(m.name)}, as: {swift_type(m.type)}.self)"
                value = f"{decoded}.map {{ QAPIIndirect($0) }}" if m.optional else f"QAPIIndirect({decoded})"
                out.append(f"        self._{member_swift(m.name)} = {value}")
            else:
                out.append(f"        self.{escape_ident(member_swift(m.name))} = try object.{method}({swift_string(m.name)})")
    else:
        out.append("        let object = try QAPIObjectReader(value, at: path)")
    out.append("        try object.finish()")
    out.append("    }")
    return out


def encoding(members):
    out = ["    public var json: JSONValue {"]
    if not members:
        out.append("        .object([:])")
    else:
        out.append("        var object: [String: JSONValue] = [:]")
        for m in members:
            s = escape_ident(member_swift(m.name))
            if m.optional:
                out.append(f"        if let {s} {{ object[{swift_string(m.name)}] = {s}.json }}")
            else:
                out.append(f"        object[{swift_string(m.name)}] = {s}.json")
        out.append("        return .object(object)")
    out.append("    }")
    return out
