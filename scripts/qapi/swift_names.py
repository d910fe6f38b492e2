"""How schema names become Swift names, and Swift literals."""

import re

from .model import BUILTINS

SWIFT_KEYWORDS = {
    "associatedtype", "class", "deinit", "enum", "extension", "fileprivate", "func", "import", "init",
    "inout", "internal", "let", "open", "operator", "private", "precedencegroup", "protocol", "public",
    "rethrows", "static", "struct", "subscript", "typealias", "var", "break", "case", "catch", "continue",
    "default", "defer", "do", "else", "fallthrough", "for", "guard", "if", "in", "repeat", "return",
    "throw", "switch", "where", "while", "Any", "as", "await", "false", "is", "nil", "self", "Self",
    "super", "throws", "true", "try", "_",
}
# Type names the generated code must not shadow.
SWIFT_RESERVED_TYPES = {
    "String", "Bool", "Int", "Int8", "Int16", "Int32", "Int64", "UInt", "UInt8", "UInt16", "UInt32",
    "UInt64", "Double", "Float", "Array", "Dictionary", "Set", "Optional", "Error", "Result", "Character",
    "Never", "Void", "Type", "Protocol", "Sendable", "Equatable", "CaseIterable", "JSONValue", "JSONError",
    "QAPIValue", "QAPIError", "QAPIEmpty", "QAPICommand", "QAPIEvent", "QAPIPath", "QAPIObjectReader",
    "QAPIIntegerDecoding", "QMPCommandTable", "QMPErrorClass", "QAPICommands", "QAPIIntrospection",
    "QAPIDocumentation", "QAPIEvents", "QAPIIndirect", "CommandDoc", "ArgumentDoc", "EventDoc",
}
# Member and enum case names the generated structs and enums already use.
RESERVED_MEMBERS = {"json", "init"}
RESERVED_CASES = {"json", "init", "rawValue", "allCases"}


def split_words(name):
    return [w for w in re.split(r"[-_.]", name) if w]


def capitalize(word):
    return word[:1].upper() + word[1:]


def member_swift(name):
    """'node-name' -> 'nodeName', 'bps_rd' -> 'bpsRd'."""
    words = split_words(name)
    first = words[0].lower() if words[0].isupper() else words[0][:1].lower() + words[0][1:]
    result = first + "".join(capitalize(w) for w in words[1:])
    if result[0].isdigit():
        result = "_" + result
    return result


def escape_ident(ident):
    """The identifier, backquoted when it is a Swift keyword."""
    return f"`{ident}`" if ident in SWIFT_KEYWORDS else ident


def type_swift(name):
    """A schema type's Swift name: 'QAPI' + name when the name is taken in Swift."""
    return "QAPI" + name if name in SWIFT_RESERVED_TYPES else name


def command_swift(name):
    """'block-job-cancel' -> 'BlockJobCancel'."""
    return "".join(capitalize(w) for w in split_words(name))


def event_swift(name):
    """'BLOCK_JOB_COMPLETED' -> 'BlockJobCompletedEvent'."""
    return "".join(capitalize(w.lower()) for w in split_words(name)) + "Event"


def module_swift(module):
    """'block-core.json' -> 'BlockCore', for file names."""
    return "".join(capitalize(w) for w in split_words(module[:-len(".json")]))


def swift_type(ref):
    """The Swift type of a TypeRef."""
    base = BUILTINS[ref.name][1] if ref.name in BUILTINS else type_swift(ref.name)
    return f"[{base}]" if ref.is_list else base


def swift_string(text):
    """A Swift string literal."""
    out = ['"']
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20:
            out.append("\\u{%x}" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)
