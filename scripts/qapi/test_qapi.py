"""Tests of the QAPI generator's parser and checker.

Run from the repository root: /usr/bin/python3 -m unittest discover scripts/qapi
"""

import os
import sys
import tempfile
import textwrap
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from qapi.checker import check  # noqa: E402
from qapi.main import generate  # noqa: E402
from qapi.model import StructDef  # noqa: E402
from qapi.parser import parse_schema  # noqa: E402
from qapi.source import SchemaError  # noqa: E402
from qapi.swift_types import render_types  # noqa: E402

ROOT = "qapi-schema.json"


def doc(name, *members):
    """A documentation block for `name` documenting `members`."""
    lines = ["##", f"# @{name}:", "#", f"# The {name} thing.", "#"]
    for m in members:
        lines += [f"# @{m}: the {m}", "#"]
    return "\n".join(lines[:-1] + ["##"]) + "\n"


def line_of(text, needle):
    """The 1-based line of `text` where `needle` first occurs."""
    return text[:text.index(needle)].count("\n") + 1


class SchemaTestCase(unittest.TestCase):
    """Writes schema files into a temporary directory and parses and checks them."""

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)

    def write(self, files):
        for name, text in files.items():
            with open(os.path.join(self.dir.name, name), "w", encoding="utf-8") as f:
                f.write(textwrap.dedent(text) if text.startswith("\n") else text)

    def parse(self, files):
        self.write(files)
        return parse_schema(self.dir.name, ROOT, "schema")

    def load(self, files):
        return check(self.parse(files))

    def assertError(self, files, expected, stage="check"):
        """Parsing (and, for stage 'check', checking) fails with exactly `expected`."""
        with self.assertRaises(SchemaError) as ctx:
            if stage == "parse":
                self.parse(files)
            else:
                self.load(files)
        self.assertEqual(str(ctx.exception), expected)


class ParserErrorTests(SchemaTestCase):

    def test_missing_colon_names_file_and_line(self):
        self.assertError({ROOT: "# header\n\n{ 'enum' 'Color',\n  'data': [ 'red' ] }\n"},
                         "schema/qapi-schema.json:3: expected ':'", "parse")

    def test_missing_comma(self):
        self.assertError({ROOT: "{ 'enum': 'Color'\n  'data': [ 'red' ] }\n"},
                         "schema/qapi-schema.json:2: expected ',' or '}'", "parse")

    def test_unquoted_word(self):
        self.assertError({ROOT: "{ 'enum': Color }\n"},
                         "schema/qapi-schema.json:1: stray character 'C'", "parse")

    def test_double_quotes_are_not_strings(self):
        self.assertError({ROOT: '{ "enum": "Color" }\n'},
                         "schema/qapi-schema.json:1: stray character '\"'", "parse")

    def test_unterminated_string(self):
        self.assertError({ROOT: "{ 'enum': 'Color,\n  'data': [] }\n"},
                         "schema/qapi-schema.json:1: unterminated string", "parse")

    def test_unexpected_end_of_file(self):
        self.assertError({ROOT: "{ 'enum': 'Color',\n  'data':"},
                         "schema/qapi-schema.json:2: unexpected end of file", "parse")

    def test_unclosed_list(self):
        self.assertError({ROOT: "{ 'enum': 'Color', 'data': [ 'red' }\n"},
                         "schema/qapi-schema.json:1: expected ',' or ']'", "parse")

    def test_duplicate_key(self):
        self.assertError({ROOT: "{ 'enum': 'Color',\n  'data': [ 'red' ],\n  'data': [ 'blue' ] }\n"},
                         "schema/qapi-schema.json:3: duplicate key 'data'", "parse")

    def test_top_level_must_be_an_object(self):
        self.assertError({ROOT: "\n\n[ 'red' ]\n"},
                         "schema/qapi-schema.json:3: a top-level expression must be an object", "parse")

    def test_error_in_included_file_names_that_file(self):
        self.assertError({ROOT: "{ 'include': 'sub.json' }\n", "sub.json": "# sub\n{ 'enum': 'X' 'Y' }\n"},
                         "schema/sub.json:2: expected ',' or '}'", "parse")

    def test_include_of_missing_file_names_the_include(self):
        self.assertError({ROOT: "\n{ 'include': 'nope.json' }\n"},
                         "schema/qapi-schema.json:2: cannot read nope.json: No such file or directory", "parse")

    def test_include_takes_only_a_file_name(self):
        self.assertError({ROOT: "{ 'include': 'sub.json', 'data': [] }\n", "sub.json": ""},
                         "schema/qapi-schema.json:1: 'include' takes one file name and nothing else", "parse")

    def test_every_file_must_be_reached(self):
        self.assertError({ROOT: doc("Color", "red") + "{ 'enum': 'Color', 'data': [ 'red' ] }\n",
                          "stray.json": ""},
                         "schema: not included from qapi-schema.json: stray.json", "parse")

    def test_documentation_block_without_definition(self):
        self.assertError({ROOT: "# header\n" + doc("Color")},
                         "schema/qapi-schema.json:2: documentation block not followed by a definition", "parse")

    def test_unclosed_documentation_block(self):
        self.assertError({ROOT: "##\n# @Color:\n#\n# Colors.\n"},
                         "schema/qapi-schema.json:1: documentation block is not closed with '##'", "parse")

    def test_documentation_must_name_its_symbol(self):
        self.assertError({ROOT: "##\n# Colors.\n##\n{ 'enum': 'Color', 'data': [ 'red' ] }\n"},
                         "schema/qapi-schema.json:2: documentation must start with '@NAME:'", "parse")

    def test_member_documented_twice(self):
        text = "##\n# @Color:\n#\n# Colors.\n#\n# @red: red\n#\n# @red: again\n##\n{ 'enum': 'Color', 'data': [ 'red' ] }\n"
        self.assertError({ROOT: text}, "schema/qapi-schema.json:8: '@red' is documented twice", "parse")

    def test_include_is_read_once(self):
        parsed = self.parse({ROOT: "{ 'include': 'a.json' }\n{ 'include': 'a.json' }\n",
                             "a.json": "# The A file.\n" + doc("Color", "red") + "{ 'enum': 'Color', 'data': [ 'red' ] }\n"})
        self.assertEqual([e.value["enum"] for e in parsed.exprs], ["Color"])
        self.assertEqual(parsed.modules, [ROOT, "a.json"])
        self.assertEqual(parsed.module_titles["a.json"], "The A file")


class DefinitionShapeTests(SchemaTestCase):

    def assertDefinitionError(self, text, message, at):
        """Checking `text` fails with `message` at the line where `at` is."""
        self.assertError({ROOT: text}, f"schema/qapi-schema.json:{line_of(text, at)}: {message}")

    def test_unknown_key(self):
        self.assertDefinitionError(doc("Point", "x") + "{ 'struct': 'Point', 'data': { 'x': 'int' }, 'bogus': 'yes' }\n",
                                   "struct 'Point' has unknown key(s): bogus", "{ 'struct'")

    def test_key_of_another_kind(self):
        self.assertDefinitionError(doc("Color", "red") + "{ 'enum': 'Color', 'data': [ 'red' ], 'base': 'X' }\n",
                                   "enum 'Color' has unknown key(s): base", "{ 'enum'")

    def test_two_kinds_in_one_expression(self):
        self.assertDefinitionError(doc("Color") + "{ 'enum': 'Color', 'struct': 'Color' }\n",
                                   "expected exactly one of 'enum', 'struct', 'union', 'alternate', 'command', 'event'",
                                   "{ 'enum'")

    def test_definition_needs_documentation(self):
        self.assertDefinitionError("# header\n{ 'enum': 'Color', 'data': [ 'red' ] }\n",
                                   "enum 'Color' has no documentation block", "{ 'enum'")

    def test_type_names_are_capitalized(self):
        self.assertDefinitionError(doc("color", "red") + "{ 'enum': 'color', 'data': [ 'red' ] }\n",
                                   "'color' is not a valid enum name", "{ 'enum'")

    def test_invalid_member_name(self):
        self.assertDefinitionError(doc("Point", "X") + "{ 'struct': 'Point', 'data': { 'X': 'int' } }\n",
                                   "'Point': invalid member name 'X'", "{ 'struct'")

    def test_enum_value_listed_twice(self):
        self.assertDefinitionError(doc("Color", "red") + "{ 'enum': 'Color', 'data': [ 'red', 'red' ] }\n",
                                   "enum 'Color' lists 'red' twice", "{ 'enum'")

    def test_boxed_needs_a_type(self):
        self.assertDefinitionError(doc("stop") + "{ 'command': 'stop', 'boxed': true }\n",
                                   "'boxed' needs 'data' naming a type", "{ 'command'")


class CheckerTests(SchemaTestCase):

    def assertCheckError(self, text, message, at):
        """Checking `text` fails with `message` at the line where `at` is."""
        self.assertError({ROOT: text}, f"schema/qapi-schema.json:{line_of(text, at)}: {message}")

    def test_duplicate_definition_names_both_places(self):
        a = doc("Color", "red") + "{ 'enum': 'Color', 'data': [ 'red' ] }\n"
        b = "# File b.\n\n" + a
        self.assertError({ROOT: "{ 'include': 'a.json' }\n{ 'include': 'b.json' }\n", "a.json": a, "b.json": b},
                         f"schema/b.json:{line_of(b, '{ ')}: 'Color' is already defined at "
                         f"schema/a.json:{line_of(a, '{ ')}")

    def test_unknown_member_type(self):
        self.assertCheckError(doc("Point", "x") + "{ 'struct': 'Point', 'data': { 'x': 'Coord' } }\n",
                              "'Point' member 'x': unknown type 'Coord'", "{ 'struct'")

    def test_command_is_not_a_type(self):
        text = (doc("stop") + "{ 'command': 'stop' }\n"
                + doc("go", "how") + "{ 'command': 'go', 'data': { 'how': 'stop' } }\n")
        self.assertCheckError(text, "'go' member 'how': unknown type 'stop'", "{ 'command': 'go'")

    def test_base_must_be_a_struct(self):
        text = (doc("Color", "red") + "{ 'enum': 'Color', 'data': [ 'red' ] }\n"
                + doc("Point") + "{ 'struct': 'Point', 'base': 'Color' }\n")
        self.assertCheckError(text, "base of 'Point': 'Color' is a enum, expected struct", "{ 'struct'")

    def test_base_cycle(self):
        text = doc("A") + "{ 'struct': 'A', 'base': 'B' }\n" + doc("B") + "{ 'struct': 'B', 'base': 'A' }\n"
        self.assertCheckError(text, "struct 'A' is its own base", "{ 'struct': 'A'")

    def test_member_clashing_with_base(self):
        text = (doc("Base", "x") + "{ 'struct': 'Base', 'data': { 'x': 'int' } }\n"
                + doc("Point", "x") + "{ 'struct': 'Point', 'base': 'Base', 'data': { '*x': 'str' } }\n")
        self.assertCheckError(text, "'Point': member 'x' clashes with a member of its base", "{ 'struct': 'Point'")

    def flat_union(self, disc_type="Kind", branch_case="a", disc_member="kind"):
        return (doc("Kind", "a", "b") + "{ 'enum': 'Kind', 'data': [ 'a', 'b' ] }\n"
                + doc("Base", "kind") + "{ 'struct': 'Base', 'data': { 'kind': '%s' } }\n" % disc_type
                + doc("A", "n") + "{ 'struct': 'A', 'data': { 'n': 'int' } }\n"
                + doc("U") + "{ 'union': 'U', 'base': 'Base', 'discriminator': '%s',\n  'data': { '%s': 'A' } }\n"
                % (disc_member, branch_case))

    def test_flat_union_is_valid(self):
        schema = self.load({ROOT: self.flat_union()})
        self.assertTrue(schema.by_name["U"].flat)
        self.assertEqual([c for c, _, _ in schema.by_name["U"].branches], ["a"])

    def test_flat_union_discriminator_must_be_a_base_member(self):
        self.assertCheckError(self.flat_union(disc_member="type"),
                              "union 'U': discriminator 'type' is not a member of 'Base'", "{ 'union'")

    def test_flat_union_discriminator_must_be_an_enum(self):
        self.assertCheckError(self.flat_union(disc_type="str"),
                              "discriminator of 'U': 'str' is a built-in type, expected enum", "{ 'union'")

    def test_flat_union_branch_must_be_an_enum_value(self):
        self.assertCheckError(self.flat_union(branch_case="c"),
                              "union 'U': branch 'c' is not a value of 'Kind'", "{ 'union'")

    def test_alternate_branches_must_differ_in_json_kind(self):
        text = doc("N", "a", "b") + "{ 'alternate': 'N', 'data': { 'a': 'int', 'b': 'size' } }\n"
        self.assertCheckError(text, "alternate 'N': branch 'b' cannot be told apart from 'a'", "{ 'alternate'")

    def test_implicit_enum_of_simple_union_clashes(self):
        text = (doc("UKind", "x") + "{ 'enum': 'UKind', 'data': [ 'x' ] }\n"
                + doc("U", "x") + "{ 'union': 'U', 'data': { 'x': 'str' } }\n")
        self.assertCheckError(text, "'UKind' clashes with the implicit enum of union 'U'", "{ 'union'")

    def test_undocumented_member(self):
        text = "# header\n" + doc("Point", "x") + "{ 'struct': 'Point', 'data': { 'x': 'int', 'y': 'int' } }\n"
        self.assertCheckError(text, "'Point': '@y' is not documented", "##")

    def test_documented_member_that_does_not_exist(self):
        text = doc("Point", "x", "z") + "{ 'struct': 'Point', 'data': { 'x': 'int' } }\n"
        self.assertCheckError(text, "'Point' has no member 'z' to document", "# @z:")

    def test_documentation_of_another_symbol(self):
        text = "# header\n" + doc("Colour", "red") + "{ 'enum': 'Color', 'data': [ 'red' ] }\n"
        self.assertCheckError(text, "documentation is for 'Colour' but the definition is 'Color'", "##")

    def test_returns_section_without_returns(self):
        text = "##\n# @stop:\n#\n# Stops.\n#\n# Returns: nothing\n##\n{ 'command': 'stop' }\n"
        self.assertCheckError(text, "'stop' documents 'Returns:' but returns nothing", "##")

    def test_only_commands_have_returns(self):
        text = "##\n# @STOPPED:\n#\n# Stopped.\n#\n# Returns: nothing\n##\n{ 'event': 'STOPPED' }\n"
        self.assertCheckError(text, "'STOPPED': only commands have 'Returns:' and 'Errors:' sections", "##")

    def test_members_that_become_one_swift_name(self):
        text = doc("Point", "a-b", "a_b") + "{ 'struct': 'Point', 'data': { 'a-b': 'int', 'a_b': 'int' } }\n"
        self.assertCheckError(text, "'Point': members 'a-b' and 'a_b' both become 'aB'", "{ 'struct'")

    def test_types_that_become_one_swift_name(self):
        text = (doc("String", "s") + "{ 'struct': 'String', 'data': { 's': 'str' } }\n"
                + doc("QAPIString", "s") + "{ 'struct': 'QAPIString', 'data': { 's': 'str' } }\n")
        self.assertCheckError(text, "type 'QAPIString' becomes Swift 'QAPIString', which type 'String' already uses",
                              "{ 'struct': 'QAPIString'")

    def test_valid_schema_resolves_members_and_documentation(self):
        text = (doc("Base", "id") + "{ 'struct': 'Base', 'data': { 'id': 'str' } }\n"
                + doc("Point", "x", "y") + "{ 'struct': 'Point', 'base': 'Base', 'data': { 'x': 'int', '*y': ['int'] } }\n"
                + doc("move", "to") + "{ 'command': 'move', 'data': { 'to': 'Point' }, 'returns': 'Point' }\n")
        schema = self.load({ROOT: text})
        point = schema.by_name["Point"]
        self.assertIsInstance(point, StructDef)
        self.assertEqual([(m.name, m.type.qapi, m.optional) for m in point.members],
                         [("id", "str", False), ("x", "int", False), ("y", "[int]", True)])
        self.assertEqual(point.members[2].doc, ["the y"])
        move = schema.of("command")[0]
        self.assertEqual((move.args_form, move.returns.name), ("inline", "Point"))


class RenderTests(SchemaTestCase):

    def test_types_of_a_module_stay_in_one_file_however_many(self):
        text = "".join(doc(f"T{i}", "value") + "{ 'struct': 'T%d', 'data': { 'value': 'int' } }\n" % i
                       for i in range(120))
        files = render_types(self.load({ROOT: "{ 'include': 'big-module.json' }\n", "big-module.json": text}))
        self.assertEqual([f.name for f in files], ["Types+BigModule.swift"])
        body = files[0].text()
        self.assertGreater(body.count("\n"), 3000)
        self.assertEqual(body.count("public struct T"), 120)

    def test_repository_schema_generates(self):
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        outputs, schema, _ = generate(root)
        types_files = sorted(p for p in outputs if "/Types+" in p)
        modules_with_types = {d.module for d in schema.definitions
                              if d.kind in ("enum", "struct", "union", "alternate")}
        self.assertEqual(len(types_files), len(modules_with_types))


if __name__ == "__main__":
    unittest.main()
