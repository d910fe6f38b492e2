"""Documentation.swift: command and event documentation as data, for help output and argument checks."""

from .swift_file import SwiftFile
from .swift_names import swift_string
from .text import doc_text, paragraphs, refs_to_plain, section, summary


def render_documentation(schema):
    f = SwiftFile("Documentation.swift", "Command and event documentation, from the schema's doc comments.")
    out = ["/// The schema's documentation of commands and events, for help output and argument checks.",
           "public enum QAPIDocumentation {",
           "    /// Command documentation by command name.",
           "    public static let commands: [String: CommandDoc] = Dictionary(",
           "        uniqueKeysWithValues: commandList.map { ($0.name, $0) })",
           "",
           "    /// Event documentation by event name.",
           "    public static let events: [String: EventDoc] = Dictionary(",
           "        uniqueKeysWithValues: eventList.map { ($0.name, $0) })",
           "",
           "    /// Command documentation in schema order.",
           "    public static let commandList: [CommandDoc] = ["]
    for cmd in schema.of("command"):
        out += command_doc(schema, cmd)
    out.append("    ]")
    out.append("")
    out.append("    /// Event documentation in schema order.")
    out.append("    public static let eventList: [EventDoc] = [")
    for ev in schema.of("event"):
        out += event_doc(schema, ev)
    out.append("    ]")
    out.append("}")
    f.add(out)
    return [f]


def command_doc(schema, cmd):
    args = schema.command_args(cmd)
    returns = section(cmd.doc, "Returns")
    out = ["        CommandDoc("]
    out.append(f"            name: {swift_string(cmd.name)},")
    out.append(f"            summary: {swift_string(summary(cmd.doc))},")
    out.append(f"            text: {swift_string(doc_text(cmd.doc, argument_lines(args)))},")
    out.extend(argument_docs(args, "arguments"))
    out.append(f"            argumentsType: {swift_string(cmd.args_type) if cmd.args_type else 'nil'},")
    other = cmd.args_form == "any" or (cmd.args_form == "boxed" and schema.by_name[cmd.args_type].kind == "union")
    out.append(f"            acceptsOtherArguments: {'true' if other else 'false'},")
    out.append(f"            returns: {swift_string(cmd.returns.qapi) if cmd.returns else 'nil'},")
    returns_doc = " ".join(refs_to_plain(p) for p in paragraphs(returns.lines)) if returns else ""
    out.append(f"            returnsDoc: {swift_string(returns_doc)}")
    out.append("        ),")
    return out


def event_doc(schema, ev):
    members = schema.event_args(ev)
    out = ["        EventDoc("]
    out.append(f"            name: {swift_string(ev.name)},")
    out.append(f"            summary: {swift_string(summary(ev.doc))},")
    out.append(f"            text: {swift_string(doc_text(ev.doc, argument_lines(members)))},")
    out.extend(argument_docs(members, "members", last=True))
    out.append("        ),")
    return out


def argument_docs(members, label, last=False):
    """An ArgumentDoc array literal."""
    if not members:
        return [f"            {label}: []{'' if last else ','}"]
    out = [f"            {label}: ["]
    for m in members:
        text = " ".join(refs_to_plain(p) for p in paragraphs(m.doc))
        out.append(f"                ArgumentDoc(name: {swift_string(m.name)}, type: {swift_string(m.type.qapi)}, "
                   f"optional: {'true' if m.optional else 'false'},")
        out.append(f"                            doc: {swift_string(text)}),")
    out.append(f"            ]{'' if last else ','}")
    return out


def argument_lines(members):
    """'  name (type, optional): text' lines for the plain-text help."""
    lines = []
    for m in members:
        text = " ".join(refs_to_plain(p) for p in paragraphs(m.doc))
        opt = ", optional" if m.optional else ""
        lines.append(f"  {m.name} ({m.type.qapi}{opt}): {text}")
    return lines
