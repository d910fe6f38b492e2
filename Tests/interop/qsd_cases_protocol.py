"""Differential cases: the QMP session itself — greeting, negotiation, framing and malformed
requests, ids, version and command list, quit."""
from differential import Call, Case, Group, Qmp


def fresh(*messages: bytes, negotiate: bool = False, oob: bool = False):
    """A new connection: its greeting's capabilities (or, with `oob`, the reply to negotiating
    out-of-band execution), then the reply to each raw message."""
    def run(side):
        q = side.fresh()
        try:
            if oob:
                out = [q.request({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}})]
            else:
                out = [q.greeting["QMP"]["capabilities"]]
            if negotiate:
                out.append(q.request({"execute": "qmp_capabilities"}))
            for message in messages:
                q.send_raw(message)
                out.append(q.reply())
            return out
        finally:
            q.close()
            side.reopen()
    return Call(run, "fresh connection with oob" if oob else "fresh connection")


def fresh_oob(*messages: bytes):
    """A new connection negotiated with out-of-band execution enabled, then the reply to each message."""
    return fresh(*messages, oob=True)


def raw(*messages: bytes):
    def run(side):
        out = []
        for message in messages:
            side.qmp.send_raw(message)
            out.append(side.qmp.reply())
        return out
    return Call(run, "raw messages")


def raw_replies(message: bytes, count: int):
    """One raw message that takes `count` replies (a lexical error, then what follows it)."""
    def run(side):
        side.qmp.send_raw(message)
        return [side.qmp.reply() for _ in range(count)]
    return Call(run, f"raw message, {count} replies")


def messages_after_quit(side):
    """The reply to quit and every message until the monitor closes."""
    side.qmp.send_raw(b'{"execute": "quit"}\n')
    out = []
    try:
        while True:
            out.append(side.qmp.receive())
    except (EOFError, OSError):
        pass
    return out


CASES = [
    Case("greeting capabilities", [fresh()]),
    Case("greeting version", [Call(lambda side: side.qmp.greeting["QMP"]["version"], "greeting version")]),
    Case("command before negotiation", [fresh(b'{"execute": "query-version"}\n')]),
    Case("qmp_capabilities twice", [fresh(b'{"execute": "qmp_capabilities"}\n', negotiate=True)]),
    Case("id echoed", [raw(b'{"execute": "query-block-exports", "id": {"a": [1, "x"]}}\n',
                           b'{"execute": "query-block-exports", "id": 7}\n')]),
    Case("unknown command", [Qmp("nosuch-command")]),
    Case("message without execute", [raw(b'{"arguments": {}}\n')]),
    Case("execute not a string", [raw(b'{"execute": 1}\n')]),
    Case("unknown top-level member", [raw(b'{"execute": "query-jobs", "extra": 1}\n')]),
    Case("request not an object", [raw(b'[1, 2]\n')]),
    Case("JSON syntax error", [raw(b'{"execute": }\n', b'{"execute": "query-jobs"}\n')]),
    Case("single-quoted strings", [raw(b"{'execute': 'query-jobs'}\n")]),
    Case("both execute and exec-oob", [raw(b'{"execute": "query-jobs", "exec-oob": "query-jobs"}\n')]),
    Case("exec-oob without the capability", [raw(b'{"exec-oob": "query-jobs"}\n')]),
    Case("parse error: missing colon", [raw(b'{"execute" "query-jobs"}\n')]),
    Case("parse error: key not a string", [raw(b'{1: 2}\n')]),
    Case("parse error: no separator in dict", [raw(b'{"execute": "query-jobs" "id": 1}\n')]),
    Case("parse error: no separator in list", [raw(b'{"execute": "query-jobs", "id": [1 2]}\n')]),
    Case("parse error: trailing comma", [raw(b'{"execute": "query-jobs", "id": [1,]}\n')]),
    Case("parse error: invalid keyword", [raw(b'{"execute": "query-jobs", "id": tru}\n')]),
    Case("parse error: invalid escape", [raw(b'{"execute": "query-jobs", "id": "\\x"}\n')]),
    Case("parse error: short unicode escape", [raw(b'{"execute": "query-jobs", "id": "\\u12"}\n')]),
    Case("parse error: lone surrogate", [raw(b'{"execute": "query-jobs", "id": "\\ud83d"}\n')]),
    Case("parse error: duplicate key", [raw(b'{"execute": "query-jobs", "execute": "query-jobs"}\n')]),
    Case("parse error: broken number", [raw(b'{"execute": "query-jobs", "id": -}\n')]),
    Case("parse error: capital letter", [raw_replies(b'{"execute": "query-jobs", "id": True}\n{"execute": "query-jobs"}\n', 3)]),
    Case("parse error: leading zero", [raw_replies(b'{"execute": "query-jobs", "id": 01}\n', 2)]),
    Case("parse error: invalid UTF-8", [raw(b'{"execute": "query-jobs", "id": "\xc3"}\n')]),
    Case("top-level keyword", [raw(b'abc\n')]),
    Case("top-level number", [raw(b'123\n')]),
    Case("top-level string", [raw(b'"abc"\n')]),
    Case("top-level closing brace", [raw(b'}\n')]),
    Case("id with characters outside ASCII", [raw(b'{"execute": "query-jobs", "id": "x\\u00e9\\ud83d\\ude00"}\n')]),
    Case("single-quoted id with escapes", [raw(b"{'execute': 'query-jobs', 'id': 'it\\'s \"q\"'}\n")]),
    Case("oob: enabled", [fresh_oob()]),
    Case("oob: in-band command", [fresh_oob(b'{"execute": "query-jobs", "id": 5}\n')]),
    Case("oob: command without oob support", [fresh_oob(b'{"exec-oob": "query-block-jobs", "id": 1}\n')]),
    Case("oob: unknown command", [fresh_oob(b'{"exec-oob": "nosuch", "id": 3}\n')]),
    Case("oob: qmp_capabilities", [fresh_oob(b'{"exec-oob": "qmp_capabilities"}\n')]),
    Case("oob: both execute and exec-oob", [fresh_oob(b'{"exec-oob": "query-jobs", "execute": "query-jobs"}\n')]),
    Case("oob: exec-oob not a string", [fresh_oob(b'{"exec-oob": 1}\n')]),
    Case("query-version", [Qmp("query-version")]),
    Case("query-commands", [Qmp("query-commands", pick=lambda a: sorted(c["name"] for c in a["return"]))]),
    Case("query-block-jobs", [Qmp("query-block-jobs")]),
    Case("quit", [Call(messages_after_quit, "quit")]),
]


def args(work):
    return ["--blockdev", "driver=null-co,node-name=n0"]


PROTOCOL = Group("protocol", args, CASES)
