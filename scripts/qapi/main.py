"""scripts/qapi-gen's command line: parse, check, render, then write or --check the outputs."""

import argparse
import os
import sys

from .checker import check
from .markdown import render_markdown
from .parser import parse_schema
from .source import SchemaError
from .swift_arguments import render_arguments
from .swift_commands import render_commands
from .swift_documentation import render_documentation
from .swift_events import render_events
from .swift_introspection import introspection, render_introspection
from .swift_types import render_types

SCHEMA_DIR = "Sources/QAPI/schema"
ROOT_FILE = "qapi-schema.json"
GENERATED_DIR = "Sources/QAPI/Generated"
DOCS_FILE = "docs/qmp.md"


def load_schema(root):
    """The checked Schema of the repository at `root`."""
    parsed = parse_schema(os.path.join(root, SCHEMA_DIR), ROOT_FILE, SCHEMA_DIR)
    return check(parsed)


def generate(root):
    """Returns ({relative path: text}, schema, introspection entries)."""
    schema = load_schema(root)
    entries = introspection(schema)
    files = []
    files += render_types(schema)
    files += render_commands(schema)
    files += render_arguments(schema)
    files += render_events(schema)
    files += render_introspection(entries)
    files += render_documentation(schema)
    outputs = {f"{GENERATED_DIR}/{f.name}": f.text() for f in files}
    outputs[DOCS_FILE] = render_markdown(schema)
    return outputs, schema, entries


def leftovers(root, outputs):
    """Swift files in the generated directory that are no longer generated."""
    generated_dir = os.path.join(root, GENERATED_DIR)
    if not os.path.isdir(generated_dir):
        return []
    return [f"{GENERATED_DIR}/{name}" for name in sorted(os.listdir(generated_dir))
            if name.endswith(".swift") and f"{GENERATED_DIR}/{name}" not in outputs]


def read_text(path):
    """The file's text, or None when it does not exist."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


def check_outputs(root, outputs, old):
    """Exit status of --check: 1, naming each stale file, when anything differs."""
    stale = []
    for rel, text in sorted(outputs.items()):
        current = read_text(os.path.join(root, rel))
        if current is None:
            stale.append(f"{rel} is missing")
        elif current != text:
            stale.append(f"{rel} is out of date")
    stale += [f"{rel} is not generated any more" for rel in old]
    for line in stale:
        print(f"qapi-gen: stale: {line}", file=sys.stderr)
    if stale:
        print("qapi-gen: run scripts/qapi-gen to regenerate", file=sys.stderr)
        return 1
    return 0


def write_outputs(root, outputs, old):
    """Writes the files that changed and removes the ones no longer generated."""
    os.makedirs(os.path.join(root, GENERATED_DIR), exist_ok=True)
    for rel, text in sorted(outputs.items()):
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if read_text(path) == text:
            continue
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"qapi-gen: wrote {rel}")
    for rel in old:
        os.remove(os.path.join(root, rel))
        print(f"qapi-gen: removed {rel}")


def print_stats(outputs, schema, entries):
    counts = {}
    for d in schema.definitions:
        counts[d.kind] = counts.get(d.kind, 0) + 1
    print("definitions: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
          + f" (total {len(schema.definitions)})")
    print(f"introspection entries: {len(entries)}")
    for rel, text in sorted(outputs.items()):
        print(f"{text.count(chr(10)):6d}  {rel}")


def main(argv=None, default_root=None):
    """The qapi-gen command; returns its exit status."""
    ap = argparse.ArgumentParser(
        prog="qapi-gen",
        description="Generate blockd's QMP Swift code (" + GENERATED_DIR + ") and reference (" + DOCS_FILE
                    + ") from the QAPI schema in " + SCHEMA_DIR + ".",
        epilog="Exit status: 0 on success, 1 when --check finds stale files, 2 on schema errors.")
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 and name every output file that differs from what would be "
                         "generated (or is missing, or is a leftover in " + GENERATED_DIR + ")")
    ap.add_argument("--root", default=default_root or os.getcwd(),
                    help="repository root (default: the parent of this script's directory)")
    ap.add_argument("--stats", action="store_true", help="print definition counts and output line counts")
    args = ap.parse_args(argv)

    try:
        outputs, schema, entries = generate(args.root)
    except SchemaError as e:
        print(f"qapi-gen: {e}", file=sys.stderr)
        return 2

    old = leftovers(args.root, outputs)
    if args.check:
        return check_outputs(args.root, outputs, old)
    write_outputs(args.root, outputs, old)
    if args.stats:
        print_stats(outputs, schema, entries)
    return 0
