"""Types+MODULE.swift: the enums, structs, unions and alternates of one schema file each."""

from .model import AlternateDef, EnumDef, StructDef, UnionDef
from .swift_file import SwiftFile, swift_doc
from .swift_names import escape_ident, member_swift, module_swift, swift_string, type_swift
from .swift_struct import render_struct
from .text import paragraphs


def render_types(schema):
    """One file per schema module that defines types, holding all of them in schema order."""
    files = []
    for module in schema.modules:
        defs = [d for d in schema.definitions
                if d.module == module and isinstance(d, (EnumDef, StructDef, UnionDef, AlternateDef))]
        if not defs:
            continue
        f = SwiftFile(f"Types+{module_swift(module)}.swift", f"Types defined in {module}.")
        for d in defs:
            f.add([f"// MARK: - {d.name}", ""] + render_type(d, schema))
        files.append(f)
    return files


def render_type(d, schema):
    if isinstance(d, EnumDef):
        return render_enum(d)
    if isinstance(d, StructDef):
        return render_struct(type_swift(d.name), d.members, paragraphs(d.doc.body), ["QAPIValue", "Equatable"],
                             boxed=recursive_members(schema, d.name, d.members))
    return render_passthrough(d)


def render_enum(d):
    out = swift_doc(paragraphs(d.doc.body))
    out.append(f"public enum {type_swift(d.name)}: String, QAPIValue, CaseIterable, Sendable {{")
    for v, doc in d.values:
        out.extend(swift_doc(paragraphs(doc), "    ", capital=True))
        out.append(f"    case {escape_ident(member_swift(v))} = {swift_string(v)}")
    out.append("}")
    return out


def render_passthrough(d):
    """Unions and alternates are JSON values; the block layer decodes them."""
    lines = paragraphs(d.doc.body)
    if isinstance(d, UnionDef) and d.flat:
        cases = ", ".join(f"'{c}'" for c, _, _ in d.branches)
        lines.append(f"A flat union on '{d.discriminator}' (cases {cases}), passed through as JSON: "
                     "the block layer decodes it.")
    elif isinstance(d, UnionDef):
        lines.append("A simple union ({\"type\": CASE, \"data\": {...}}), passed through as JSON.")
    else:
        lines.append("An alternate of " + ", ".join(f"{c} ({r.qapi})" for c, r, _ in d.branches)
                     + ", passed through as JSON.")
    out = swift_doc(lines)
    out.append(f"public typealias {type_swift(d.name)} = JSONValue")
    return out


def recursive_members(schema, owner, members):
    """Names of members whose (non-list) type contains `owner` by value, which Swift must box."""
    def contains(type_name, seen):
        d = schema.by_name.get(type_name)
        if not isinstance(d, StructDef) or type_name in seen:
            return False
        seen.add(type_name)
        for m in d.members:
            if m.type.is_list:
                continue
            if m.type.name == owner or contains(m.type.name, seen):
                return True
        return False
    return {m.name for m in members
            if not m.type.is_list and (m.type.name == owner or contains(m.type.name, set()))}
