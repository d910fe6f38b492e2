"""Differential cases: the QMP session itself — greeting, negotiation, framing and malformed
requests, ids, version and command list, quit."""
from differential import Call, Case, Group, Qmp


def fresh(*messages: bytes, negotiate: bool = False):
    """A new connection: its greeting's capabilities, then the reply to each raw message."""
    def run(side):
        q = side.fresh()
        try:
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
    return Call(run, "fresh connection")


def raw(*messages: bytes):
    def run(side):
        out = []
        for message in messages:
            side.qmp.send_raw(message)
            out.append(side.qmp.reply())
        return out
    return Call(run, "raw messages")


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
    Case("query-version", [Qmp("query-version")]),
    Case("query-commands", [Qmp("query-commands", pick=lambda a: sorted(c["name"] for c in a["return"]))]),
    Case("query-block-jobs", [Qmp("query-block-jobs")]),
    Case("quit", [Call(messages_after_quit, "quit")]),
]


def args(work):
    return ["--blockdev", "driver=null-co,node-name=n0"]


PROTOCOL = Group("protocol", args, CASES)
