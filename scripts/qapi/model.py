"""The resolved schema: built-in types, definitions with their members, and lookups."""

from dataclasses import dataclass, field
from typing import Optional

from .doc import DocBlock
from .source import Loc

BUILTINS = {
    # name: (JSON type for introspection, Swift type)
    "str": ("string", "String"),
    "int": ("int", "Int64"),
    "int8": ("int", "Int8"),
    "int16": ("int", "Int16"),
    "int32": ("int", "Int32"),
    "int64": ("int", "Int64"),
    "uint8": ("int", "UInt8"),
    "uint16": ("int", "UInt16"),
    "uint32": ("int", "UInt32"),
    "uint64": ("int", "UInt64"),
    "size": ("int", "UInt64"),
    "number": ("number", "Double"),
    "bool": ("boolean", "Bool"),
    "any": ("value", "JSONValue"),
}

# JSON kinds a value of each builtin can have, for alternate ambiguity checks.
BUILTIN_KINDS = {name: ("string" if name == "str" else "boolean" if name == "bool"
                        else "value" if name == "any" else "number") for name in BUILTINS}


@dataclass
class TypeRef:
    """A use of a type: its name, and whether it is a list of it."""
    name: str
    is_list: bool = False

    @property
    def qapi(self):
        return f"[{self.name}]" if self.is_list else self.name


@dataclass
class Member:
    """A member of a struct, or an argument of a command or event."""
    name: str
    type: TypeRef
    optional: bool
    doc: list = field(default_factory=list)      # lines


@dataclass
class Definition:
    """What every definition has."""
    kind: str                  # enum struct union alternate command event
    name: str
    loc: Loc
    module: str
    doc: Optional[DocBlock]    # None only for implicit enums


@dataclass
class EnumDef(Definition):
    """An enum; simple unions add an implicit one of their branch names."""
    values: list = field(default_factory=list)    # [(name, doc lines)]
    implicit: bool = False


@dataclass
class StructDef(Definition):
    """A struct, with its own members and, once checked, all of them."""
    base: Optional[str] = None
    own: list = field(default_factory=list)        # [Member]
    members: list = field(default_factory=list)    # base members first, then own


@dataclass
class UnionDef(Definition):
    """A simple union, or a flat one with a base and a discriminator."""
    base: Optional[str] = None
    discriminator: Optional[str] = None
    branches: list = field(default_factory=list)   # [(case, TypeRef, doc lines)]

    @property
    def flat(self):
        return self.discriminator is not None


@dataclass
class AlternateDef(Definition):
    """An alternate: a value of one of its branch types, told apart by JSON kind."""
    branches: list = field(default_factory=list)   # [(name, TypeRef, doc lines)]


@dataclass
class CommandDef(Definition):
    """A command, with its arguments in one of five forms and its result type."""
    args_form: str = "none"    # none, inline, named, boxed, any
    args: list = field(default_factory=list)       # [Member] for inline
    args_type: Optional[str] = None                 # named or boxed type
    returns: Optional[TypeRef] = None


@dataclass
class EventDef(Definition):
    """An event, with its data inline, as a named struct, or none."""
    args_form: str = "none"    # none, inline, named
    args: list = field(default_factory=list)
    args_type: Optional[str] = None


@dataclass
class Schema:
    """The checked schema: definitions in schema order, and the files they came from."""
    definitions: list                      # schema order
    by_name: dict                          # also holds the implicit enums
    modules: list                          # file names in include order
    module_titles: dict

    def of(self, kind):
        return [d for d in self.definitions if d.kind == kind]

    def type(self, name):
        return self.by_name.get(name)

    def members_of(self, name):
        """Members of a struct, or the base members of a flat union."""
        d = self.by_name[name]
        if isinstance(d, StructDef):
            return d.members
        if isinstance(d, UnionDef) and d.base:
            return self.by_name[d.base].members
        return []

    def command_args(self, cmd):
        if cmd.args_form == "inline":
            return cmd.args
        if cmd.args_form in ("named", "boxed"):
            return self.members_of(cmd.args_type)
        return []

    def event_args(self, ev):
        if ev.args_form == "inline":
            return ev.args
        if ev.args_form == "named":
            return self.members_of(ev.args_type)
        return []
