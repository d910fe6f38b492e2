"""Commands.swift: one QAPICommand per command (name, argument and result types), and the list of all."""

from .swift_file import SwiftFile, swift_doc
from .swift_names import command_swift, swift_string, swift_type, type_swift
from .text import paragraphs


def render_commands(schema):
    commands = schema.of("command")
    f = SwiftFile("Commands.swift", "Commands: names, argument and result types.")
    for cmd in commands:
        doc = paragraphs(cmd.doc.body)[:1]
        if cmd.args_form == "any":
            doc.append("The arguments object is handed to the handler undecoded.")
        out = swift_doc(doc)
        out.append(f"public enum {command_swift(cmd.name)}Command: QAPICommand {{")
        out.append(f"    public static let name = {swift_string(cmd.name)}")
        out.append(f"    public typealias Arguments = {arguments_swift(cmd)}")
        result = swift_type(cmd.returns) if cmd.returns else "QAPIEmpty"
        out.append(f"    public typealias Result = {result}")
        out.append("}")
        f.add(out)
    listing = ["/// Every command of the schema, in schema order.", "public enum QAPICommands {",
               "    /// The command descriptions, for registering handlers and listing names.",
               "    public static let all: [any QAPICommand.Type] = ["]
    listing += [f"        {command_swift(c.name)}Command.self," for c in commands]
    listing += ["    ]", "}"]
    f.add(listing)
    return [f]


def arguments_swift(cmd):
    """The Swift type a command's arguments decode to."""
    if cmd.args_form == "inline":
        return command_swift(cmd.name) + "Arguments"
    if cmd.args_form in ("named", "boxed"):
        return type_swift(cmd.args_type)
    if cmd.args_form == "any":
        return "JSONValue"
    return "QAPIEmpty"
