"""'##' documentation blocks: the symbol, its description, member and tagged sections."""

import re
from dataclasses import dataclass

from .source import SchemaError

SECTION_TAGS = ("Returns", "Errors", "Since", "Note", "Notes", "Example", "Examples")
ARG_LINE = re.compile(r"^@([A-Za-z0-9_.-]+):(?:\s+(.*))?$")
TAG_LINE = re.compile(r"^(" + "|".join(SECTION_TAGS) + r"):(?:\s+(.*))?$")
SYMBOL_LINE = re.compile(r"^@([A-Za-z0-9_-]+):$")


@dataclass
class DocSection:
    """A tagged section ('Returns:', 'Example:', ...) and its lines."""
    tag: str
    lines: list


@dataclass
class DocBlock:
    """A '##' documentation block."""
    loc: object                      # Loc of the opening '##'
    symbol: str
    body: list                       # lines before the first section
    args: dict                       # member name -> lines
    arg_locs: dict                   # member name -> Loc
    tail: list                       # free lines after the member sections
    sections: list                   # DocSection, in order


def parse_doc(loc, lines):
    """Splits a block's (text, Loc) lines into symbol, body, member and tagged sections."""
    if not lines:
        raise SchemaError(loc, "empty documentation block")
    first, first_loc = lines[0]
    match = SYMBOL_LINE.match(first)
    if not match:
        raise SchemaError(first_loc, "documentation must start with '@NAME:'")
    doc = DocBlock(loc=loc, symbol=match.group(1), body=[], args={}, arg_locs={}, tail=[], sections=[])
    current = doc.body          # the list lines go to
    in_arg = False
    for text, line_loc in lines[1:]:
        arg = ARG_LINE.match(text)
        tag = TAG_LINE.match(text)
        if arg:
            name = arg.group(1)
            if name in doc.args:
                raise SchemaError(line_loc, f"'@{name}' is documented twice")
            if doc.sections:
                raise SchemaError(line_loc, f"'@{name}:' must come before the tagged sections")
            current = doc.args[name] = [arg.group(2) or ""]
            doc.arg_locs[name] = line_loc
            in_arg = True
        elif tag:
            section = DocSection(tag=tag.group(1), lines=[tag.group(2)] if tag.group(2) else [])
            doc.sections.append(section)
            current = section.lines
            in_arg = False
        elif in_arg and text == "":
            current = doc.tail
            in_arg = False
            current.append("")
        else:
            current.append(text)
    return doc
