"""Semantic checks across definitions; the result is the resolved Schema.

Names are unique and not built-in; every type reference resolves to a type
of the right kind; struct bases form no cycle and add no clashing member;
flat unions have an enum discriminator whose values cover their branches;
alternate branches can be told apart by their JSON kind; documentation
covers exactly the members it should; no two things become one Swift name.
"""

from .definitions import ENUM_VALUE, MEMBER_NAME, read_definition
from .model import (BUILTIN_KINDS, BUILTINS, AlternateDef, CommandDef, EnumDef, EventDef, Schema,
                    StructDef, TypeRef, UnionDef)
from .source import SchemaError
from .swift_names import (RESERVED_CASES, RESERVED_MEMBERS, command_swift, event_swift, member_swift,
                          type_swift)
from .text import paragraphs


def check(parsed):
    """The Schema of a ParsedSchema, or SchemaError naming the first problem."""
    return Checker(parsed).check()


class Checker:
    """Checks one parsed schema; check() returns its Schema."""

    def __init__(self, parsed):
        self.parsed = parsed
        self.defs = []
        self.by_name = {}

    def fail(self, loc, message):
        raise SchemaError(loc, message)

    def check(self):
        for expr in self.parsed.exprs:
            self.defs.append(read_definition(expr))
        for d in self.defs:
            if d.name in self.by_name:
                self.fail(d.loc, f"'{d.name}' is already defined at {self.by_name[d.name].loc}")
            if d.name in BUILTINS:
                self.fail(d.loc, f"'{d.name}' is a built-in type")
            self.by_name[d.name] = d
        self.add_implicit_enums()
        for d in self.defs:
            getattr(self, "check_" + d.kind)(d)
        for d in self.defs:
            self.check_doc(d)
        self.check_swift_names()
        return Schema(definitions=self.defs, by_name=self.by_name, modules=list(self.parsed.modules),
                      module_titles=dict(self.parsed.module_titles))

    def add_implicit_enums(self):
        """Simple unions get an implicit enum of their branch names, as in QAPI."""
        for d in list(self.defs):
            if isinstance(d, UnionDef) and not d.flat:
                kind_name = d.name + "Kind"
                if kind_name in self.by_name:
                    self.fail(d.loc, f"'{kind_name}' clashes with the implicit enum of union '{d.name}'")
                implicit = EnumDef(kind="enum", name=kind_name, loc=d.loc, module=d.module, doc=None,
                                   values=[(case, []) for case, _, _ in d.branches], implicit=True)
                self.by_name[kind_name] = implicit

    # -- references and members ---------------------------------------------

    def resolve(self, loc, ref, what, kinds=None):
        """The definition `ref` names (None for a built-in), which must be one of `kinds`."""
        if ref.name in BUILTINS:
            if kinds is not None and "builtin" not in kinds:
                self.fail(loc, f"{what}: '{ref.name}' is a built-in type, expected {' or '.join(kinds)}")
            return None
        d = self.by_name.get(ref.name)
        if d is None or d.kind in ("command", "event"):
            self.fail(loc, f"{what}: unknown type '{ref.name}'")
        if kinds is not None and d.kind not in kinds:
            self.fail(loc, f"{what}: '{ref.name}' is a {d.kind}, expected {' or '.join(kinds)}")
        return d

    def check_members(self, loc, owner, members):
        seen = {}
        for m in members:
            if m.name in seen:
                self.fail(loc, f"'{owner}': member '{m.name}' is defined twice")
            seen[m.name] = m
            self.resolve(loc, m.type, f"'{owner}' member '{m.name}'")

    def struct_members(self, d, chain=()):
        """All members of struct `d`, its base's first; fills in d.members."""
        if d.name in chain:
            self.fail(d.loc, f"struct '{d.name}' is its own base")
        if d.members:
            return d.members
        members = []
        if d.base:
            base = self.resolve(d.loc, TypeRef(d.base), f"base of '{d.name}'", ["struct"])
            members = list(self.struct_members(base, chain + (d.name,)))
        names = {m.name for m in members}
        for m in d.own:
            if m.name in names:
                self.fail(d.loc, f"'{d.name}': member '{m.name}' clashes with a member of its base")
        d.members = members + d.own
        return d.members

    # -- one check per kind --------------------------------------------------

    def check_enum(self, d):
        pass

    def check_struct(self, d):
        self.check_members(d.loc, d.name, d.own)
        self.struct_members(d)

    def check_union(self, d):
        if not d.flat:
            for case, ref, _ in d.branches:
                if not ENUM_VALUE.match(case):
                    self.fail(d.loc, f"union '{d.name}': invalid branch name '{case}'")
                self.resolve(d.loc, ref, f"union '{d.name}' branch '{case}'")
            return
        base = self.resolve(d.loc, TypeRef(d.base), f"base of union '{d.name}'", ["struct"])
        base_members = self.struct_members(base)
        tag = next((m for m in base_members if m.name == d.discriminator), None)
        if tag is None:
            self.fail(d.loc, f"union '{d.name}': discriminator '{d.discriminator}' is not a member of '{d.base}'")
        if tag.optional or tag.type.is_list:
            self.fail(d.loc, f"union '{d.name}': discriminator '{d.discriminator}' must be required and not a list")
        tag_enum = self.resolve(d.loc, tag.type, f"discriminator of '{d.name}'", ["enum"])
        values = [v for v, _ in tag_enum.values]
        base_names = {m.name for m in base_members}
        for case, ref, _ in d.branches:
            if case not in values:
                self.fail(d.loc, f"union '{d.name}': branch '{case}' is not a value of '{tag_enum.name}'")
            branch = self.resolve(d.loc, ref, f"union '{d.name}' branch '{case}'", ["struct"])
            for m in self.struct_members(branch):
                if m.name in base_names:
                    self.fail(d.loc, f"union '{d.name}' branch '{case}': member '{m.name}' clashes with the base")

    def check_alternate(self, d):
        kinds = {}
        for case, ref, _ in d.branches:
            if not MEMBER_NAME.match(case):
                self.fail(d.loc, f"alternate '{d.name}': invalid branch name '{case}'")
            target = self.resolve(d.loc, ref, f"alternate '{d.name}' branch '{case}'")
            if target is None:
                kind = BUILTIN_KINDS[ref.name]
            elif target.kind == "enum":
                kind = "string"
            elif target.kind == "alternate":
                self.fail(d.loc, f"alternate '{d.name}': branch '{case}' cannot be an alternate")
            else:
                kind = "object"
            if kind == "value" or kind in kinds:
                self.fail(d.loc, f"alternate '{d.name}': branch '{case}' cannot be told apart from "
                                 f"'{kinds.get(kind, 'the others')}'")
            kinds[kind] = case

    def check_command(self, d):
        if d.args_form == "inline":
            self.check_members(d.loc, d.name, d.args)
        elif d.args_form == "named":
            target = self.resolve(d.loc, TypeRef(d.args_type), f"arguments of '{d.name}'", ["struct"])
            self.struct_members(target)
        elif d.args_form == "boxed":
            self.resolve(d.loc, TypeRef(d.args_type), f"arguments of '{d.name}'", ["struct", "union"])
        if d.returns is not None:
            self.resolve(d.loc, d.returns, f"'returns' of '{d.name}'")

    def check_event(self, d):
        if d.args_form == "inline":
            self.check_members(d.loc, d.name, d.args)
        elif d.args_form == "named":
            target = self.resolve(d.loc, TypeRef(d.args_type), f"data of '{d.name}'", ["struct"])
            self.struct_members(target)

    # -- documentation -------------------------------------------------------

    def check_doc(self, d):
        """The block documents exactly the definition's own members; its text goes into the model."""
        doc = d.doc
        if doc.symbol != d.name:
            self.fail(doc.loc, f"documentation is for '{doc.symbol}' but the definition is '{d.name}'")
        if not paragraphs(doc.body):
            self.fail(doc.loc, f"'{d.name}' needs a description")
        if isinstance(d, EnumDef):
            documented = [v for v, _ in d.values]
        elif isinstance(d, StructDef):
            documented = [m.name for m in d.own]
        elif isinstance(d, (UnionDef, AlternateDef)):
            documented = [] if isinstance(d, UnionDef) and d.flat else [c for c, _, _ in d.branches]
        elif isinstance(d, (CommandDef, EventDef)):
            documented = [m.name for m in d.args] if d.args_form == "inline" else []
        for name in documented:
            if name not in doc.args:
                self.fail(doc.loc, f"'{d.name}': '@{name}' is not documented")
        for name in doc.args:
            if name not in documented:
                self.fail(doc.arg_locs[name], f"'{d.name}' has no member '{name}' to document")
            if not paragraphs(doc.args[name]):
                self.fail(doc.arg_locs[name], f"'{d.name}': '@{name}' has no text")
        # Attach the text to the model.
        if isinstance(d, EnumDef):
            d.values = [(v, doc.args[v]) for v, _ in d.values]
        elif isinstance(d, StructDef):
            for m in d.own:
                m.doc = doc.args[m.name]
        elif isinstance(d, (UnionDef, AlternateDef)):
            d.branches = [(c, r, doc.args.get(c, [])) for c, r, _ in d.branches]
        elif isinstance(d, (CommandDef, EventDef)) and d.args_form == "inline":
            for m in d.args:
                m.doc = doc.args[m.name]
        if isinstance(d, CommandDef):
            if any(s.tag == "Returns" for s in doc.sections) and d.returns is None:
                self.fail(doc.loc, f"'{d.name}' documents 'Returns:' but returns nothing")
        elif any(s.tag in ("Returns", "Errors") for s in doc.sections):
            self.fail(doc.loc, f"'{d.name}': only commands have 'Returns:' and 'Errors:' sections")

    # -- Swift names ---------------------------------------------------------

    def check_swift_names(self):
        """No two definitions, members or enum values become the same Swift name."""
        owners = {}

        def claim(swift, what, loc):
            if swift in owners:
                self.fail(loc, f"{what} becomes Swift '{swift}', which {owners[swift]} already uses")
            owners[swift] = what

        for d in self.defs:
            if d.kind == "command":
                claim(command_swift(d.name) + "Command", f"command '{d.name}'", d.loc)
                if d.args_form == "inline":
                    claim(command_swift(d.name) + "Arguments", f"arguments of '{d.name}'", d.loc)
            elif d.kind == "event":
                claim(event_swift(d.name), f"event '{d.name}'", d.loc)
            else:
                claim(type_swift(d.name), f"type '{d.name}'", d.loc)
        for d in self.defs:
            member_lists = []
            if isinstance(d, StructDef):
                member_lists.append(d.members)
            elif isinstance(d, (CommandDef, EventDef)) and d.args_form == "inline":
                member_lists.append(d.args)
            for members in member_lists:
                seen = {}
                for m in members:
                    s = member_swift(m.name)
                    if s in RESERVED_MEMBERS:
                        self.fail(d.loc, f"'{d.name}': member '{m.name}' would clash with the generated '{s}'")
                    if s in seen:
                        self.fail(d.loc, f"'{d.name}': members '{seen[s]}' and '{m.name}' both become '{s}'")
                    seen[s] = m.name
            if isinstance(d, EnumDef):
                seen = {}
                for v, _ in d.values:
                    s = member_swift(v)
                    if s in RESERVED_CASES:
                        self.fail(d.loc, f"enum '{d.name}': value '{v}' would clash with '{s}'")
                    if s in seen:
                        self.fail(d.loc, f"enum '{d.name}': values '{seen[s]}' and '{v}' both become '{s}'")
                    seen[s] = v
