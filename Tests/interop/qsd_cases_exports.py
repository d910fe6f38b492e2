"""Differential cases: exports added and removed live, what NBD clients (nbdinfo, libnbd) see of
them, the BLOCK_EXPORT_DELETED event, and the node statistics after client I/O."""
import json
import subprocess

from differential import Call, Case, Group, Qmp, pick_named

MiB = 1 << 20


def prepare(work):
    with open(work / "d.img", "wb") as f:
        f.truncate(8 * MiB)
        f.seek(MiB)
        f.write(b"\x5a" * (64 << 10))
    with open(work / "odd.img", "wb") as f:
        f.truncate(MiB + 100)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(work / "base.qcow2"), "4M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 2 0 1M", str(work / "base.qcow2")],
                   check=True, capture_output=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(work / "top.qcow2")],
                   check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 3 512k 4k", "-c", "write -z 2M 64k", str(work / "top.qcow2")],
                   check=True, capture_output=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(work / "q.qcow2"), "4M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 1 64k 128k", "-c", "write -z 1M 64k",
                    str(work / "q.qcow2")], check=True, capture_output=True)


def args(work):
    return ["--blockdev", f"driver=file,node-name=f0,filename={work / 'd.img'}",
            "--blockdev", "driver=raw,node-name=disk0,file=f0",
            "--blockdev", json.dumps({"driver": "qcow2", "node-name": "q0",
                                      "file": {"driver": "file", "filename": str(work / "q.qcow2")}}),
            "--blockdev", "driver=null-co,node-name=n0,size=1048576,read-zeroes=on",
            "--blockdev", json.dumps({"driver": "qcow2", "node-name": "top", "read-only": True,
                                      "file": {"driver": "file", "filename": str(work / "top.qcow2"), "read-only": True}}),
            "--blockdev", json.dumps({"driver": "raw", "node-name": "odd",
                                      "file": {"driver": "file", "filename": str(work / "odd.img")}}),
            "--nbd-server", f"addr.type=unix,addr.path={work / 'nbd.sock'}"]


def nbdinfo(export, *options):
    def run(side):
        proc = subprocess.run(["nbdinfo", "--json", *options, side.nbd_uri(export)], capture_output=True, text=True,
                              timeout=30)
        if proc.returncode != 0:
            return {"exit": proc.returncode}
        return json.loads(proc.stdout)
    return Call(run, f"nbdinfo {export} {' '.join(options)}")


def nbdinfo_list():
    def run(side):
        proc = subprocess.run(["nbdinfo", "--list", "--json", side.nbd_uri()], capture_output=True, text=True, timeout=30)
        return json.loads(proc.stdout) if proc.returncode == 0 else {"exit": proc.returncode}
    return Call(run, "nbdinfo --list")


def event(name):
    return Call(lambda side: side.qmp.event(name, timeout=5), f"event {name}")


def with_client(export, *steps):
    """Connects libnbd to `export`, runs the QMP steps (command, arguments) while it is connected,
    then reads through the client (None when the server dropped it) and disconnects."""
    def run(side):
        import nbd
        h = nbd.NBD()
        h.connect_uri(side.nbd_uri(export))
        replies = [side.qmp.cmd(command, arguments) for command, arguments in steps]
        try:
            still = h.pread(512, 0) is not None
            h.shutdown()
        except nbd.Error:
            still = False
        return {"replies": replies, "client still served": still}
    return Call(run, f"client on {export}")


def client_io(export):
    """Writes, reads, zeroes, trims and flushes through libnbd (each operation's outcome)."""
    def run(side):
        import nbd
        from client_helpers import nbd_outcome
        h = nbd.NBD()
        h.connect_uri(side.nbd_uri(export))
        size = h.get_size()
        out = {
            "write": nbd_outcome(lambda: h.pwrite(b"\xa5" * 65536, size // 2)),
            "read": h.pread(4096, MiB).hex()[:16],
            "zero": nbd_outcome(lambda: h.zero(65536, size - MiB)),
            "trim": nbd_outcome(lambda: h.trim(65536, size - MiB // 2)),
            "trim past the end": nbd_outcome(lambda: h.trim(65536, size)),
            "flush": nbd_outcome(h.flush),
        }
        h.shutdown()
        return out
    return Call(run, f"I/O on {export}")


EXPORT_CASES = [
    Case("block-export-add default", [
        Qmp("block-export-add", {"type": "nbd", "id": "e0", "node-name": "disk0"}),
        Qmp("query-block-exports"), nbdinfo("disk0")]),
    Case("block-export-add writable with name and description", [
        Qmp("block-export-add", {"type": "nbd", "id": "e1", "node-name": "q0", "name": "qcow", "writable": True,
                                 "description": "a qcow2 image"}),
        nbdinfo("qcow")]),
    Case("nbdinfo --map of a qcow2 export", [nbdinfo("qcow", "--map")]),
    Case("nbdinfo --map of a sparse raw export", [nbdinfo("disk0", "--map")]),
    Case("block-export-add allocation-depth", [
        Qmp("block-export-add", {"type": "nbd", "id": "e2", "node-name": "n0", "allocation-depth": True}),
        nbdinfo("n0"), nbdinfo("n0", "--map=qemu:allocation-depth")]),
    Case("export of a qcow2 with a backing file", [
        Qmp("block-export-add", {"type": "nbd", "id": "e3", "node-name": "top", "allocation-depth": True}),
        nbdinfo("top"), nbdinfo("top", "--map"), nbdinfo("top", "--map=qemu:allocation-depth")]),
    Case("writable export of a read-only node", [
        Qmp("block-export-add", {"type": "nbd", "id": "e9", "node-name": "top", "name": "topw", "writable": True})]),
    Case("nbd-server-add writable of a read-only node", [
        Qmp("nbd-server-add", {"device": "top", "name": "topn", "writable": True}), nbdinfo("topn"),
        Qmp("nbd-server-remove", {"name": "topn"}), event("BLOCK_EXPORT_DELETED")]),
    Case("export with writethrough", [
        Qmp("block-export-add", {"type": "nbd", "id": "e4", "node-name": "odd", "writable": True, "writethrough": True}),
        Qmp("query-block-exports")]),
    Case("export of a file whose size is not a multiple of 512", [
        nbdinfo("odd"), Qmp("block-export-del", {"id": "e4"}), event("BLOCK_EXPORT_DELETED")]),
    Case("invalid export id", [Qmp("block-export-add", {"type": "nbd", "id": "9x", "node-name": "n0"})]),
    Case("export name too long", [Qmp("block-export-add", {"type": "nbd", "id": "e8", "node-name": "n0", "name": "x" * 4097})]),
    Case("nbdinfo --list", [nbdinfo_list()]),
    Case("query-block-exports with three", [Qmp("query-block-exports")]),
    Case("query-block with exports", [Qmp("query-block")]),
    Case("query-blockstats with exports", [Qmp("query-blockstats")]),
    Case("safe block-export-del with a client", [with_client("qcow", ("block-export-del", {"id": "e1"}))]),
    Case("hard block-export-del with a client", [
        with_client("qcow", ("block-export-del", {"id": "e1", "mode": "hard"})),
        event("BLOCK_EXPORT_DELETED"), Qmp("query-block-exports")]),
    Case("block-export-del idle", [Qmp("block-export-del", {"id": "e2"}), event("BLOCK_EXPORT_DELETED")]),
    Case("nbd-server-add and remove", [
        Qmp("nbd-server-add", {"device": "q0", "name": "viaadd", "writable": True}),
        Qmp("query-block-exports"), nbdinfo("viaadd"),
        Qmp("nbd-server-remove", {"name": "viaadd"}), event("BLOCK_EXPORT_DELETED")]),
    Case("nbd-server-add default name", [
        Qmp("nbd-server-add", {"device": "n0"}), Qmp("query-block-exports"),
        Qmp("nbd-server-remove", {"name": "n0", "mode": "hard"}), event("BLOCK_EXPORT_DELETED")]),
    Case("nbd-server-remove by export name, not id", [
        Qmp("block-export-add", {"type": "nbd", "id": "e5", "node-name": "n0", "name": "other"}),
        Qmp("nbd-server-remove", {"name": "other"}), Qmp("nbd-server-remove", {"name": "e5"}),
        event("BLOCK_EXPORT_DELETED")]),
    Case("nbd-server-stop removes the exports", [
        Qmp("nbd-server-stop"), Qmp("query-block-exports"), Qmp("nbd-server-stop")]),
    Case("nbd-server-start again", [
        Call(lambda side: side.qmp.cmd("nbd-server-start",
                                       {"addr": {"type": "unix", "data": {"path": str(side.work / "nbd.sock")}}}),
             "nbd-server-start"),
        Qmp("block-export-add", {"type": "nbd", "id": "e0", "node-name": "disk0"}), nbdinfo("disk0")]),
    Case("block-export-add without a server", [
        Qmp("nbd-server-stop"), Qmp("block-export-add", {"type": "nbd", "id": "e0", "node-name": "disk0"}),
        Qmp("nbd-server-add", {"device": "disk0"}), Qmp("nbd-server-remove", {"name": "disk0"})]),
]

EXPORTS = Group("exports", args, EXPORT_CASES, prepare)


def stats_args(work):
    with open(work / "unmap.img", "wb") as f:
        f.truncate(4 * MiB)
    unmapping = {"driver": "raw", "node-name": "dz", "discard": "unmap",
                 "file": {"driver": "file", "filename": str(work / "unmap.img"), "discard": "unmap"}}
    return [*args(work), "--blockdev", json.dumps(unmapping),
            "--export", "type=nbd,id=e0,node-name=disk0,writable=on",
            "--export", "type=nbd,id=e1,node-name=q0,name=qcow,writable=on",
            "--export", "type=nbd,id=e2,node-name=dz,writable=on"]


STATS_CASES = [
    Case("write threshold set", [
        Qmp("block-set-write-threshold", {"node-name": "disk0", "write-threshold": 3 * MiB}),
        Qmp("query-named-block-nodes", pick=lambda a: [n["write_threshold"] for n in a["return"] if n["node-name"] == "disk0"])]),
    Case("I/O through the raw export", [client_io("disk0")]),
    Case("write threshold passed", [
        event("BLOCK_WRITE_THRESHOLD"),
        Qmp("query-named-block-nodes", pick=lambda a: [n["write_threshold"] for n in a["return"] if n["node-name"] == "disk0"])]),
    Case("I/O through the qcow2 export", [client_io("qcow")]),
    Case("I/O through an export that discards", [client_io("dz")]),
] + [
    Case(f"query-blockstats query-nodes {node} after I/O", [Qmp("query-blockstats", {"query-nodes": True}, pick=pick_named(node))])
    for node in ("f0", "disk0", "q0", "n0", "dz")
] + [
    Case("query-blockstats after I/O", [Qmp("query-blockstats")]),
    Case("query-block after I/O", [Qmp("query-block")]),
]

STATS = Group("stats", stats_args, STATS_CASES, prepare)
