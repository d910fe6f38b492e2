"""Events.swift: a QAPIEvent struct per event, and the list of all."""

from .swift_file import SwiftFile
from .swift_names import event_swift, swift_string
from .swift_struct import render_struct
from .text import paragraphs


def render_events(schema):
    f = SwiftFile("Events.swift", "Events and their data.")
    for ev in schema.of("event"):
        members = schema.event_args(ev)
        extra = [f"    public static let name = {swift_string(ev.name)}"]
        if ev.args_form == "none":
            extra.append("    public static var hasData: Bool { false }")
        f.add(render_struct(event_swift(ev.name), members, paragraphs(ev.doc.body),
                            ["QAPIEvent", "Equatable"], extra))
    listing = ["/// Every event of the schema, in schema order.", "public enum QAPIEvents {",
               "    /// The event types, for listing names and decoding received events.",
               "    public static let all: [any QAPIEvent.Type] = ["]
    listing += [f"        {event_swift(ev.name)}.self," for ev in schema.of("event")]
    listing += ["    ]", "}"]
    f.add(listing)
    return [f]
