"""CommandArguments.swift: a struct for each command whose arguments are declared inline."""

from .swift_file import SwiftFile
from .swift_names import command_swift
from .swift_struct import render_struct


def render_arguments(schema):
    f = SwiftFile("CommandArguments.swift", "Argument structs of commands with inline arguments.")
    for cmd in schema.of("command"):
        if cmd.args_form != "inline":
            continue
        f.add(render_struct(command_swift(cmd.name) + "Arguments", cmd.args, [f"The arguments of '{cmd.name}'."],
                            ["QAPIValue", "Equatable"]))
    return [f]
