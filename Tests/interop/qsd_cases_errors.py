"""Differential cases: how node, resize, export and object commands fail (and succeed) on a daemon
with an exported raw node over a file node, a qcow2 node with a named inline file child, and a
null-co node."""
import subprocess

from differential import Call, Case, Group, Qmp

MiB = 1 << 20


def prepare(work):
    with open(work / "d.img", "wb") as f:
        f.truncate(16 * MiB)
    with open(work / "loose.img", "wb") as f:
        f.truncate(4 * MiB)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(work / "q.qcow2"), "16M"], check=True)


def args(work):
    return ["--blockdev", f"driver=file,node-name=f0,filename={work / 'd.img'}",
            "--blockdev", "driver=raw,node-name=disk0,file=f0",
            "--blockdev", f"driver=file,node-name=f1,filename={work / 'loose.img'}",
            "--blockdev", "driver=raw,node-name=disk1,file=f1",
            "--blockdev", '{"driver":"qcow2","node-name":"q0","file":{"driver":"file","node-name":"qf",'
                          f'"filename":"{work / "q.qcow2"}"}}}}',
            "--blockdev", "driver=null-co,node-name=n0,size=1048576",
            "--nbd-server", f"addr.type=unix,addr.path={work / 'nbd.sock'}",
            "--export", "type=nbd,id=e0,node-name=disk0,writable=on"]


def qmp(case_id, command, arguments=None):
    return Case(case_id, [Qmp(command, arguments)])


def file_size(name):
    return Call(lambda side: (side.work / name).stat().st_size, f"size of {name}")


def node_size(name):
    def size(side):
        nodes = side.qmp.cmd("query-named-block-nodes")["return"]
        return [n["image"]["virtual-size"] for n in nodes if n.get("node-name") == name]
    return Call(size, f"virtual-size of {name}")


CASES = [
    # blockdev-del
    qmp("blockdev-del unknown node", "blockdev-del", {"node-name": "nope"}),
    qmp("blockdev-del exported node", "blockdev-del", {"node-name": "disk0"}),
    qmp("blockdev-del child of another node", "blockdev-del", {"node-name": "f0"}),
    qmp("blockdev-del inline child", "blockdev-del", {"node-name": "qf"}),
    Case("blockdev-del then add again", [
        Qmp("blockdev-add", {"driver": "null-co", "node-name": "tmp0"}),
        Qmp("blockdev-del", {"node-name": "tmp0"}),
        Qmp("blockdev-del", {"node-name": "tmp0"}),
        Qmp("blockdev-add", {"driver": "null-co", "node-name": "tmp0"}),
        Qmp("blockdev-del", {"node-name": "tmp0"})]),
    Case("blockdev-del a node with an inline child", [
        Qmp("blockdev-add", {"driver": "raw", "node-name": "tmp1", "file": {"driver": "null-co", "node-name": "tmp1f"}}),
        Qmp("blockdev-del", {"node-name": "tmp1f"}),
        Qmp("blockdev-del", {"node-name": "tmp1"}),
        Qmp("query-named-block-nodes", {"flat": True},
            pick=lambda a: sorted(n["node-name"] for n in a.get("return", []) if n["node-name"].startswith("tmp")))]),
    # block_resize: lookups and argument checks
    qmp("block_resize unknown node-name", "block_resize", {"node-name": "nope", "size": 4096}),
    qmp("block_resize unknown device", "block_resize", {"device": "nope", "size": 4096}),
    qmp("block_resize device and node-name both unknown", "block_resize", {"device": "x", "node-name": "y", "size": 512}),
    qmp("block_resize empty names", "block_resize", {"device": "", "node-name": "", "size": 512}),
    qmp("block_resize neither device nor node-name", "block_resize", {"size": 512}),
    qmp("block_resize node name given as device", "block_resize", {"device": "disk1", "size": 512}),
    qmp("block_resize negative size", "block_resize", {"node-name": "disk1", "size": -1}),
    qmp("block_resize missing size", "block_resize", {"node-name": "disk1"}),
    qmp("block_resize qcow2 unaligned", "block_resize", {"node-name": "q0", "size": 1000}),
    qmp("block_resize file under qcow2", "block_resize", {"node-name": "qf", "size": 1 << 30}),
    qmp("block_resize exported node", "block_resize", {"node-name": "disk0", "size": 32 * MiB}),
    qmp("block_resize file under exported raw", "block_resize", {"node-name": "f0", "size": 32 * MiB}),
    Case("block_resize unaligned raw rounds up to 512", [
        Qmp("block_resize", {"node-name": "disk1", "size": 4 * MiB + 1}), node_size("disk1"), node_size("f1")]),
    Case("block_resize file under unused raw", [
        Qmp("block_resize", {"node-name": "f1", "size": 6 * MiB}), node_size("disk1"), file_size("loose.img")]),
    Case("block_resize qcow2 grows", [
        Qmp("block_resize", {"node-name": "q0", "size": 32 * MiB}), node_size("q0")]),
    # block-export-add / del
    qmp("block-export-add unknown node", "block-export-add", {"type": "nbd", "id": "e1", "node-name": "nope"}),
    qmp("block-export-add id in use", "block-export-add", {"type": "nbd", "id": "e0", "node-name": "disk1"}),
    qmp("block-export-add name in use", "block-export-add", {"type": "nbd", "id": "e9", "node-name": "disk1", "name": "disk0"}),
    qmp("block-export-del unknown id", "block-export-del", {"id": "nope"}),
    qmp("nbd-server-remove unknown name", "nbd-server-remove", {"name": "nope"}),
    qmp("nbd-server-add unknown device", "nbd-server-add", {"device": "nope"}),
    qmp("nbd-server-add name in use", "nbd-server-add", {"device": "disk1", "name": "disk0"}),
    # nbd-server-start: argument errors come before "already running"
    qmp("nbd-server-start 2.6 unix without path", "nbd-server-start", {"addr": {"type": "unix", "data": {}}}),
    qmp("nbd-server-start flat unix without path", "nbd-server-start", {"addr": {"type": "unix"}}),
    qmp("nbd-server-start inet without port", "nbd-server-start", {"addr": {"type": "inet", "data": {"host": "127.0.0.1"}}}),
    qmp("nbd-server-start unknown address type", "nbd-server-start", {"addr": {"type": "vsock2", "data": {}}}),
    qmp("nbd-server-start already running", "nbd-server-start",
        {"addr": {"type": "unix", "data": {"path": "/nonexistent/x.sock"}}}),
    # Commands that were missing
    qmp("query-jobs", "query-jobs"),
    qmp("block_passwd", "block_passwd", {"device": "disk0", "password": "secret"}),
    qmp("x-debug-query-block-graph", "x-debug-query-block-graph"),
    Case("object-add throttle-group", [
        Qmp("object-add", {"qom-type": "throttle-group", "id": "tg0", "limits": {"bps-total": 1000000}}),
        Qmp("blockdev-add", {"driver": "throttle", "node-name": "th0", "throttle-group": "tg0", "file": "n0"}),
        Qmp("query-named-block-nodes", {"flat": True}, pick=lambda a: [n for n in a["return"] if n["node-name"] == "th0"])]),
    qmp("object-add duplicate id", "object-add", {"qom-type": "throttle-group", "id": "tg0"}),
    qmp("object-del group in use", "object-del", {"id": "tg0"}),
    Case("object-del after its last node", [
        Qmp("blockdev-del", {"node-name": "th0"}), Qmp("object-del", {"id": "tg0"}), Qmp("object-del", {"id": "tg0"})]),
    qmp("object-del unknown", "object-del", {"id": "nope"}),
    qmp("object-add x- properties", "object-add", {"qom-type": "throttle-group", "id": "tg1", "x-iops-total": 100}),
    qmp("object-add bad limit", "object-add", {"qom-type": "throttle-group", "id": "tg2", "limits": {"bps-total": -1}}),
    qmp("object-add unknown type", "object-add", {"qom-type": "nosuch-type", "id": "o1"}),
    qmp("object-add without id", "object-add", {"qom-type": "throttle-group"}),
    qmp("object-add invalid id", "object-add", {"qom-type": "throttle-group", "id": "1bad"}),
    qmp("throttle node on unknown group", "blockdev-add",
        {"driver": "throttle", "node-name": "th1", "throttle-group": "nope", "file": "n0"}),
]

ERRORS = Group("errors", args, CASES, prepare)
