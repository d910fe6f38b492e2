"""Expressions -> definitions, checking the shape of each expression on its own.

Which keys an expression may have, what its name looks like, what form its
'data' takes. Everything that needs other definitions is checker.py's.
"""

import re

from .model import (AlternateDef, CommandDef, EnumDef, EventDef, Member, StructDef, TypeRef,
                    UnionDef)
from .source import SchemaError

TYPE_NAME = re.compile(r"^[A-Z][A-Za-z0-9]*$")
MEMBER_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
ENUM_VALUE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
COMMAND_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
EVENT_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")

ALLOWED_KEYS = {
    "enum": {"enum", "data", "prefix"},
    "struct": {"struct", "data", "base"},
    "union": {"union", "data", "base", "discriminator"},
    "alternate": {"alternate", "data"},
    "command": {"command", "data", "returns", "boxed"},
    "event": {"event", "data"},
}


def fail(loc, message):
    raise SchemaError(loc, message)


def read_definition(expr):
    """The Definition an expression declares."""
    value, loc = expr.value, expr.loc
    kinds = [k for k in ALLOWED_KEYS if k in value]
    if len(kinds) != 1:
        fail(loc, "expected exactly one of " + ", ".join(f"'{k}'" for k in ALLOWED_KEYS))
    kind = kinds[0]
    extra = set(value) - ALLOWED_KEYS[kind]
    if extra:
        fail(loc, f"{kind} '{value[kind]}' has unknown key(s): " + ", ".join(sorted(extra)))
    name = value[kind]
    if not isinstance(name, str):
        fail(loc, f"the name of a {kind} must be a string")
    pattern = {"command": COMMAND_NAME, "event": EVENT_NAME}.get(kind, TYPE_NAME)
    if not pattern.match(name):
        fail(loc, f"'{name}' is not a valid {kind} name")
    if expr.doc is None:
        fail(loc, f"{kind} '{name}' has no documentation block")
    common = dict(kind=kind, name=name, loc=loc, module=expr.module, doc=expr.doc)
    return READERS[kind](value, loc, name, common)


def read_enum(value, loc, name, common):
    data = value.get("data")
    if not isinstance(data, list) or not data:
        fail(loc, f"enum '{name}' needs a non-empty list of values")
    if "prefix" in value and not isinstance(value["prefix"], str):
        fail(loc, "'prefix' must be a string")
    values = []
    for v in data:
        if not isinstance(v, str) or not ENUM_VALUE.match(v):
            fail(loc, f"enum '{name}' has an invalid value {v!r}")
        if v in [x for x, _ in values]:
            fail(loc, f"enum '{name}' lists '{v}' twice")
        values.append((v, []))
    return EnumDef(values=values, **common)


def read_struct(value, loc, name, common):
    base = value.get("base")
    if base is not None and not isinstance(base, str):
        fail(loc, "'base' must name a struct")
    return StructDef(base=base, own=read_members(loc, value.get("data"), name), **common)


def read_union(value, loc, name, common):
    data = value.get("data")
    if not isinstance(data, dict) or not data:
        fail(loc, f"union '{name}' needs a non-empty object of branches")
    base, disc = value.get("base"), value.get("discriminator")
    if (base is None) != (disc is None):
        fail(loc, f"union '{name}': 'base' and 'discriminator' go together")
    if base is not None and not isinstance(base, str):
        fail(loc, "'base' must name a struct")
    if disc is not None and not isinstance(disc, str):
        fail(loc, "'discriminator' must be a member name")
    branches = [(case, read_type(loc, t, f"branch '{case}'", allow_list=False), [])
                for case, t in data.items()]
    return UnionDef(base=base, discriminator=disc, branches=branches, **common)


def read_alternate(value, loc, name, common):
    data = value.get("data")
    if not isinstance(data, dict) or len(data) < 2:
        fail(loc, f"alternate '{name}' needs at least two branches")
    branches = [(case, read_type(loc, t, f"branch '{case}'", allow_list=False), [])
                for case, t in data.items()]
    return AlternateDef(branches=branches, **common)


def read_command(value, loc, name, common):
    data, boxed = value.get("data"), value.get("boxed", False)
    if not isinstance(boxed, bool):
        fail(loc, "'boxed' must be true or false")
    cmd = CommandDef(**common)
    if data is None:
        if boxed:
            fail(loc, "'boxed' needs 'data' naming a type")
    elif isinstance(data, dict):
        if boxed:
            fail(loc, "'boxed' needs 'data' naming a type, not inline members")
        cmd.args_form, cmd.args = "inline", read_members(loc, data, name)
    elif data == "any":
        if boxed:
            fail(loc, "'any' arguments cannot be boxed")
        cmd.args_form = "any"
    elif isinstance(data, str):
        cmd.args_form, cmd.args_type = ("boxed" if boxed else "named"), data
    else:
        fail(loc, "'data' must be members, a type name or 'any'")
    if "returns" in value:
        cmd.returns = read_type(loc, value["returns"], "'returns'", allow_list=True)
    return cmd


def read_event(value, loc, name, common):
    data = value.get("data")
    ev = EventDef(**common)
    if data is None:
        pass
    elif isinstance(data, dict):
        ev.args_form, ev.args = "inline", read_members(loc, data, name)
    elif isinstance(data, str):
        ev.args_form, ev.args_type = "named", data
    else:
        fail(loc, "'data' must be members or a struct name")
    return ev


READERS = {
    "enum": read_enum,
    "struct": read_struct,
    "union": read_union,
    "alternate": read_alternate,
    "command": read_command,
    "event": read_event,
}


def read_members(loc, data, owner):
    """Members from a 'data' object; a '*' before the name makes one optional."""
    if data is None:
        return []
    if not isinstance(data, dict):
        fail(loc, f"'{owner}': 'data' must be an object of members")
    members = []
    for key, t in data.items():
        optional = key.startswith("*")
        name = key[1:] if optional else key
        if not MEMBER_NAME.match(name):
            fail(loc, f"'{owner}': invalid member name '{key}'")
        members.append(Member(name=name, type=read_type(loc, t, f"member '{name}'", True),
                              optional=optional))
    return members


def read_type(loc, t, what, allow_list):
    """A TypeRef from 'NAME' or ['NAME']."""
    if isinstance(t, str):
        return TypeRef(t)
    if isinstance(t, list):
        if not allow_list:
            fail(loc, f"{what} cannot be a list")
        if len(t) != 1 or not isinstance(t[0], str):
            fail(loc, f"{what}: a list type is written ['TYPE']")
        return TypeRef(t[0], is_list=True)
    fail(loc, f"{what}: expected a type name")
