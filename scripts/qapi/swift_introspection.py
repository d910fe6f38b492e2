"""Introspection.swift: the answer of query-qmp-schema, in QEMU's SchemaInfo format."""

import json

from .model import BUILTINS, AlternateDef, CommandDef, EnumDef, EventDef, Member, StructDef, TypeRef, UnionDef
from .swift_file import SwiftFile

EMPTY_OBJECT = "q_empty"


def introspection(schema):
    """SchemaInfo objects in QEMU's format, names unmasked: commands and events in schema order,
    then every type sorted by name."""
    entries = []
    types = {}          # name -> SchemaInfo of types
    used_builtins = set()
    arrays = set()

    def use(ref):
        if ref.is_list:
            arrays.add(ref.name)
        if ref.name in BUILTINS:
            used_builtins.add(ref.name)
        return ref.qapi

    def members_info(members):
        out = []
        for m in members:
            info = {"name": m.name, "type": use(m.type)}
            if m.optional:
                info["default"] = None
            out.append(info)
        return out

    def object_type(name, members):
        types[name] = {"name": name, "meta-type": "object", "members": members_info(members)}
        return name

    object_type(EMPTY_OBJECT, [])

    for d in schema.definitions:
        if isinstance(d, CommandDef):
            if d.args_form == "inline":
                arg = object_type(f"q_obj_{d.name}-arg", d.args)
            elif d.args_form in ("named", "boxed"):
                arg = d.args_type
            elif d.args_form == "any":
                arg = use(TypeRef("any"))
            else:
                arg = EMPTY_OBJECT
            ret = use(d.returns) if d.returns else EMPTY_OBJECT
            entries.append({"name": d.name, "meta-type": "command", "arg-type": arg, "ret-type": ret})
        elif isinstance(d, EventDef):
            if d.args_form == "inline":
                arg = object_type(f"q_obj_{d.name}-arg", d.args)
            elif d.args_form == "named":
                arg = d.args_type
            else:
                arg = EMPTY_OBJECT
            entries.append({"name": d.name, "meta-type": "event", "arg-type": arg})
        elif isinstance(d, EnumDef):
            types[d.name] = enum_info(d.name, [v for v, _ in d.values])
        elif isinstance(d, StructDef):
            object_type(d.name, d.members)
        elif isinstance(d, UnionDef):
            if d.flat:
                info = {"name": d.name, "meta-type": "object",
                        "members": members_info(schema.by_name[d.base].members),
                        "tag": d.discriminator,
                        "variants": [{"case": c, "type": r.name} for c, r, _ in d.branches]}
            else:
                kind = d.name + "Kind"
                types[kind] = enum_info(kind, [c for c, _, _ in d.branches])
                variants = []
                for c, r, _ in d.branches:
                    wrapper = f"q_obj_{r.name}-wrapper"
                    object_type(wrapper, [Member(name="data", type=r, optional=False)])
                    variants.append({"case": c, "type": wrapper})
                info = {"name": d.name, "meta-type": "object",
                        "members": [{"name": "type", "type": kind}],
                        "tag": "type", "variants": variants}
            types[d.name] = info
        elif isinstance(d, AlternateDef):
            types[d.name] = {"name": d.name, "meta-type": "alternate",
                             "members": [{"type": use(r)} for _, r, _ in d.branches]}
    for element in arrays:
        types[f"[{element}]"] = {"name": f"[{element}]", "meta-type": "array", "element-type": element}
    for b in used_builtins | {"str", "int", "bool"}:
        types[b] = {"name": b, "meta-type": "builtin", "json-type": BUILTINS[b][0]}
    entries += [types[name] for name in sorted(types)]
    return entries


def enum_info(name, values):
    return {"name": name, "meta-type": "enum", "values": values, "members": [{"name": v} for v in values]}


def render_introspection(entries):
    """The file, from the entries introspection() returned."""
    body = ",\n".join("    " + json.dumps(e, separators=(", ", ": ")) for e in entries)
    f = SwiftFile("Introspection.swift", "The answer of query-qmp-schema.")
    out = ["/// The schema in QEMU's introspection format.",
           "public enum QAPIIntrospection {",
           "    /// The JSON text `query-qmp-schema` returns: an array of SchemaInfo objects",
           "    /// (meta-types builtin, enum, array, object, alternate, command, event).",
           "    /// Implicit types use QEMU's internal names unmasked: `q_empty`, `q_obj_NAME-arg`,",
           "    /// `q_obj_TYPE-wrapper`.",
           "    public static let schema: String = #\"\"\"",
           "    ["]
    out += body.split("\n")
    out += ["    ]", "    \"\"\"#", "}"]
    f.add(out)
    return [f]
