"""Schema files -> expressions.

The syntax is QAPI's JSON dialect: objects, arrays, single-quoted strings,
true and false; '#' starts a comment; a '##' line opens and closes a
documentation block, which belongs to the expression that follows it.
{'include': FILE} reads another file of the same directory (once).
Every error names the file and line.
"""

import os
from dataclasses import dataclass
from typing import Optional

from .doc import DocBlock, parse_doc
from .source import Loc, SchemaError


@dataclass
class Expr:
    """One top-level definition as parsed, before any checks."""
    loc: Loc
    value: dict
    doc: Optional[DocBlock]
    module: str                      # schema file name


@dataclass
class ParsedSchema:
    """Every expression of a schema, and the files they came from."""
    exprs: list                      # Expr, in schema order
    modules: list                    # file names in the order they were first read
    module_titles: dict              # file name -> title from its header comment


class Lexer:
    """Tokens of one schema file: punctuation, quoted strings, true/false.

    Comments run from '#' to the end of the line; '##' lines delimit
    documentation blocks, which are collected separately."""

    def __init__(self, path, text):
        self.path = path
        self.text = text
        self.pos = 0
        self.line = 1
        self.pending_doc = None      # DocBlock seen since the last expression

    def loc(self):
        return Loc(self.path, self.line)

    def error(self, message):
        raise SchemaError(self.loc(), message)

    def next(self):
        """Returns (kind, value, loc); kind is one of '{}[]:,', 'str', 'bool', 'eof'."""
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if ch == "\n":
                self.line += 1
                self.pos += 1
            elif ch in " \t\r":
                self.pos += 1
            elif ch == "#":
                if self.at_line_start() and text.startswith("##", self.pos) \
                        and text[self.pos:self.line_end()].strip() == "##":
                    self.read_doc_block()
                else:
                    self.pos = self.line_end()
            else:
                break
        if self.pos >= len(text):
            return ("eof", None, self.loc())
        ch = text[self.pos]
        loc = self.loc()
        if ch in "{}[]:,":
            self.pos += 1
            return (ch, ch, loc)
        if ch == "'":
            return ("str", self.read_string(), loc)
        for word, value in (("true", True), ("false", False)):
            if text.startswith(word, self.pos):
                self.pos += len(word)
                return ("bool", value, loc)
        self.error(f"stray character {ch!r}")

    def peek(self):
        """The next token, without consuming it."""
        saved = (self.pos, self.line, self.pending_doc)
        token = self.next()
        self.pos, self.line, self.pending_doc = saved
        return token

    def at_line_start(self):
        start = self.text.rfind("\n", 0, self.pos) + 1
        return self.text[start:self.pos].strip() == ""

    def line_end(self):
        end = self.text.find("\n", self.pos)
        return len(self.text) if end < 0 else end

    def read_string(self):
        self.pos += 1
        out = []
        while True:
            if self.pos >= len(self.text) or self.text[self.pos] == "\n":
                self.error("unterminated string")
            ch = self.text[self.pos]
            self.pos += 1
            if ch == "'":
                return "".join(out)
            if ch == "\\":
                if self.pos >= len(self.text):
                    self.error("unterminated string")
                esc = self.text[self.pos]
                self.pos += 1
                if esc not in "\\'\"/":
                    self.error(f"unsupported escape \\{esc}")
                out.append(esc)
            else:
                out.append(ch)

    def read_doc_block(self):
        start = self.loc()
        if self.pending_doc is not None:
            raise SchemaError(self.pending_doc.loc, "documentation block not followed by a definition")
        self.pos = self.line_end()
        lines = []
        while True:
            if self.pos >= len(self.text):
                raise SchemaError(start, "documentation block is not closed with '##'")
            self.pos += 1       # the newline
            self.line += 1
            if self.pos >= len(self.text):
                raise SchemaError(start, "documentation block is not closed with '##'")
            raw = self.text[self.pos:self.line_end()]
            stripped = raw.strip()
            if stripped == "##":
                self.pos = self.line_end()
                break
            if not stripped.startswith("#"):
                self.error("documentation lines must start with '#'")
            content = stripped[1:]
            if content.startswith(" "):
                content = content[1:]
            elif content:
                self.error("put a space after '#' in documentation")
            lines.append((content.rstrip(), self.loc()))
            self.pos = self.line_end()
        self.pending_doc = parse_doc(start, lines)

    def take_doc(self):
        doc, self.pending_doc = self.pending_doc, None
        return doc


class Parser:
    """Reads the files of one schema directory, following includes."""

    def __init__(self, schema_dir, display_dir):
        self.schema_dir = schema_dir        # where the files are read from
        self.display_dir = display_dir      # how error messages name that directory
        self.seen = []                      # file names in the order they were first read
        self.exprs = []

    def parse_file(self, name, include_loc=None):
        if name in self.seen:
            return
        path = os.path.join(self.schema_dir, name)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise SchemaError(include_loc, f"cannot read {name}: {e.strerror}")
        self.seen.append(name)
        lexer = Lexer(f"{self.display_dir}/{name}", text)
        while True:
            kind, _, loc = lexer.peek()
            if kind == "eof":
                lexer.next()            # reads a trailing documentation block, which peek() forgets
                if lexer.pending_doc is not None:
                    raise SchemaError(lexer.pending_doc.loc, "documentation block not followed by a definition")
                break
            value = self.parse_value(lexer)
            if not isinstance(value, dict):
                raise SchemaError(loc, "a top-level expression must be an object")
            doc = lexer.take_doc()
            if "include" in value:
                if set(value) != {"include"} or not isinstance(value["include"], str):
                    raise SchemaError(loc, "'include' takes one file name and nothing else")
                if doc is not None:
                    raise SchemaError(doc.loc, "an include has no documentation")
                self.parse_file(value["include"], loc)
            else:
                self.exprs.append(Expr(loc=loc, value=value, doc=doc, module=name))

    def parse_value(self, lexer):
        kind, value, loc = lexer.next()
        if kind == "str" or kind == "bool":
            return value
        if kind == "{":
            result = {}
            kind, value, loc = lexer.next()
            if kind == "}":
                return result
            while True:
                if kind != "str":
                    raise SchemaError(loc, "expected a quoted key")
                if value in result:
                    raise SchemaError(loc, f"duplicate key '{value}'")
                key = value
                kind, _, loc = lexer.next()
                if kind != ":":
                    raise SchemaError(loc, "expected ':'")
                result[key] = self.parse_value(lexer)
                kind, _, loc = lexer.next()
                if kind == "}":
                    return result
                if kind != ",":
                    raise SchemaError(loc, "expected ',' or '}'")
                kind, value, loc = lexer.next()
        if kind == "[":
            result = []
            if lexer.peek()[0] == "]":
                lexer.next()
                return result
            while True:
                result.append(self.parse_value(lexer))
                kind, _, loc = lexer.next()
                if kind == "]":
                    return result
                if kind != ",":
                    raise SchemaError(loc, "expected ',' or ']'")
        raise SchemaError(loc, "expected a value" if kind != "eof" else "unexpected end of file")


def module_title(path):
    """The first line of a schema file's header comment that is not an editor hint."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("#"):
                break
            text = line.lstrip("#").strip()
            if text and "-*-" not in text and not text.startswith("vim:"):
                return text.rstrip(".:")
    return os.path.basename(path)


def parse_schema(schema_dir, root_file, display_dir):
    """Parses root_file and everything it includes; every .json file of the directory must be reached."""
    parser = Parser(schema_dir, display_dir)
    parser.parse_file(root_file)
    files = sorted(f for f in os.listdir(schema_dir) if f.endswith(".json"))
    unreached = [f for f in files if f not in parser.seen]
    if unreached:
        raise SchemaError(None, f"{display_dir}: not included from {root_file}: " + ", ".join(unreached))
    titles = {m: module_title(os.path.join(schema_dir, m)) for m in parser.seen}
    return ParsedSchema(exprs=parser.exprs, modules=list(parser.seen), module_titles=titles)
