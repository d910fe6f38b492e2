"""Documentation text: paragraphs, examples, '@name' references, summaries."""

import re

REF = re.compile(r"@([A-Za-z][A-Za-z0-9_-]*)")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Za-z\"(])")


def paragraphs(lines):
    """Joins documentation lines into paragraphs, separated by blank lines."""
    result, current = [], []
    for line in lines:
        if line.strip() == "":
            if current:
                result.append(" ".join(current))
                current = []
        else:
            current.extend(line.split())
    if current:
        result.append(" ".join(current))
    return result


def verbatim(lines):
    """Example lines, with blank lines around them and common indentation removed."""
    lines = list(lines)
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    indent = min((len(l) - len(l.lstrip()) for l in lines if l.strip()), default=0)
    return [l[indent:] for l in lines]


def section(doc, tag):
    """The block's section tagged `tag` (or its plural), or None."""
    for s in doc.sections:
        if s.tag == tag or s.tag == tag + "s":
            return s
    return None


def refs_to_code(text):
    """'@name' references as Markdown code spans."""
    return REF.sub(r"`\1`", text)


def refs_to_plain(text):
    """'@name' references for terminal output: members quoted, type names bare."""
    return REF.sub(lambda m: m.group(1) if m.group(1)[0].isupper() else f"'{m.group(1)}'", text)


def doc_text(doc, arg_lines=None):
    """The whole documentation of a definition as plain text, for help output."""
    out = []
    for p in paragraphs(doc.body):
        out.append(refs_to_plain(p))
    if arg_lines:
        out.append("Arguments:\n" + "\n".join(arg_lines))
    for p in paragraphs(doc.tail):
        out.append(refs_to_plain(p))
    for s in doc.sections:
        if s.tag.startswith("Example"):
            out.append(s.tag + ":\n" + "\n".join("  " + l for l in verbatim(s.lines)))
        else:
            out.append(s.tag + ": " + "\n\n".join(refs_to_plain(p) for p in paragraphs(s.lines)))
    return "\n\n".join(out)


def summary(doc):
    """The first sentence of the description, as plain text."""
    ps = paragraphs(doc.body)
    return refs_to_plain(SENTENCE_END.split(ps[0], maxsplit=1)[0]) if ps else ""


def wrap(text, width):
    """Words of `text` in lines of at most `width` characters (a longer word gets its own line)."""
    words, lines, current = text.split(), [], ""
    for w in words:
        if current and len(current) + 1 + len(w) > width:
            lines.append(current)
            current = w
        else:
            current = f"{current} {w}" if current else w
    if current:
        lines.append(current)
    return lines or [""]
