"""Differential cases: what the query commands say about a node of every driver blockd has (file,
raw, qcow2 in its variants and backing chains, null-co, null-aio, blkdebug, blkverify, quorum,
throttle), each with the generated nodes below it: query-named-block-nodes (full and flat),
query-blockstats with query-nodes, and the whole graph."""
import json
import subprocess

from differential import Case, Group, Qmp, pick_named

MiB = 1 << 20


def qemu_img(*words):
    subprocess.run(["qemu-img", *map(str, words)], check=True, capture_output=True)


def prepare(work):
    for name, size in (("d.img", 16 * MiB), ("win.img", 8 * MiB), ("ro.img", 2 * MiB), ("dz.img", 2 * MiB),
                       ("qa.img", MiB), ("qb.img", MiB), ("qc.img", MiB), ("bt.img", MiB), ("br.img", MiB),
                       ("t1.img", MiB), ("rawbase.img", 4 * MiB), ("qv1.img", MiB), ("qv2.img", MiB),
                       ("kv.img", 2 * MiB), ("b2.img", MiB)):
        with open(work / name, "wb") as f:
            f.truncate(size)
    qemu_img("create", "-q", "-f", "qcow2", work / "base.qcow2", "16M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", work / "top.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", work / "v2.qcow2", "8M")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on,cluster_size=4096", work / "lazy.qcow2", "8M")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "refcount_bits=64,cluster_size=2M", work / "big.qcow2", "64M")
    qemu_img("create", "-q", "-f", "qcow2", work / "c0.qcow2", "4M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "c0.qcow2", "-F", "qcow2", work / "c1.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "c1.qcow2", "-F", "qcow2", work / "c2.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "rawbase.img", "-F", "raw", work / "overraw.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", work / "nob.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", work / "snap.qcow2", "4M")
    qemu_img("snapshot", "-c", "first", work / "snap.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", work / "over.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", work / "over2.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", work / "data.qcow2", "4M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 7 0 1M", str(work / "data.qcow2")], check=True,
                   capture_output=True)


def file(work, name, **extra):
    return {"driver": "file", "filename": str(work / name), **extra}


# (node name, --blockdev definition as a function of the work directory)
NODES = [
    ("f0", lambda w: file(w, "d.img", **{"node-name": "f0"})),
    ("r0", lambda w: {"driver": "raw", "node-name": "r0", "file": "f0"}),
    ("rw", lambda w: {"driver": "raw", "node-name": "rw", "offset": MiB, "size": 4 * MiB, "file": file(w, "win.img")}),
    ("ro", lambda w: {"driver": "raw", "node-name": "ro", "read-only": True, "file": file(w, "ro.img", **{"read-only": True})}),
    ("dz", lambda w: {"driver": "raw", "node-name": "dz", "detect-zeroes": "unmap", "discard": "unmap",
                      "file": file(w, "dz.img", discard="unmap")}),
    ("q0", lambda w: {"driver": "qcow2", "node-name": "q0", "file": file(w, "top.qcow2")}),
    ("qd", lambda w: {"driver": "qcow2", "node-name": "qd", "file": file(w, "data.qcow2")}),
    ("q2", lambda w: {"driver": "qcow2", "node-name": "q2", "file": file(w, "v2.qcow2")}),
    ("ql", lambda w: {"driver": "qcow2", "node-name": "ql", "file": file(w, "lazy.qcow2")}),
    ("qg", lambda w: {"driver": "qcow2", "node-name": "qg", "read-only": True, "file": file(w, "big.qcow2")}),
    ("qc", lambda w: {"driver": "qcow2", "node-name": "qc", "file": file(w, "c2.qcow2")}),
    ("qr", lambda w: {"driver": "qcow2", "node-name": "qr", "file": file(w, "overraw.qcow2")}),
    ("qn", lambda w: {"driver": "qcow2", "node-name": "qn", "backing": None, "file": file(w, "nob.qcow2")}),
    ("n4", lambda w: {"driver": "null-co", "node-name": "n4", "size": 16 * MiB, "read-zeroes": True}),
    ("qs", lambda w: {"driver": "qcow2", "node-name": "qs", "read-only": True, "file": file(w, "snap.qcow2", **{"read-only": True})}),
    ("qo", lambda w: {"driver": "qcow2", "node-name": "qo", "backing": "n4", "file": file(w, "over.qcow2")}),
    ("qi", lambda w: {"driver": "qcow2", "node-name": "qi", "file": file(w, "over2.qcow2", **{"read-only": True}),
                      "read-only": True, "backing": {"driver": "qcow2", "file": file(w, "base.qcow2", **{"read-only": True}),
                                                     "read-only": True}}),
    ("rn", lambda w: {"driver": "raw", "node-name": "rn", "file": {"driver": "null-co", "size": 4096}}),
    ("n0", lambda w: {"driver": "null-co", "node-name": "n0"}),
    ("n1", lambda w: {"driver": "null-co", "node-name": "n1", "size": MiB}),
    ("n2", lambda w: {"driver": "null-co", "node-name": "n2", "size": 2 * MiB, "read-zeroes": True}),
    ("n3", lambda w: {"driver": "null-co", "node-name": "n3", "latency-ns": 10}),
    ("na", lambda w: {"driver": "null-aio", "node-name": "na", "size": MiB}),
    ("b0", lambda w: {"driver": "blkdebug", "node-name": "b0", "image": {"driver": "null-co"}}),
    ("b1", lambda w: {"driver": "blkdebug", "node-name": "b1", "image": "n1"}),
    ("b2", lambda w: {"driver": "blkdebug", "node-name": "b2", "align": 4096, "image": file(w, "b2.img")}),
    ("bv", lambda w: {"driver": "blkverify", "node-name": "bv", "test": file(w, "bt.img"), "raw": file(w, "br.img")}),
    ("b3", lambda w: {"driver": "blkdebug", "node-name": "b3", "image": "n0", "inject-error": [
        {"event": "read_aio", "errno": 5, "once": True}], "set-state": [{"event": "write_aio", "new_state": 2}]}),
    ("qv", lambda w: {"driver": "quorum", "node-name": "qv", "vote-threshold": 1, "read-pattern": "fifo",
                      "rewrite-corrupted": False, "children": [file(w, "qv1.img"), file(w, "qv2.img")]}),
    ("qu", lambda w: {"driver": "quorum", "node-name": "qu", "vote-threshold": 2,
                      "children": [file(w, "qa.img"), file(w, "qb.img"), file(w, "qc.img")]}),
    ("t0", lambda w: {"driver": "throttle", "node-name": "t0", "throttle-group": "tg0", "file": "n2"}),
    ("t1", lambda w: {"driver": "throttle", "node-name": "t1", "throttle-group": "tg1", "file": file(w, "t1.img")}),
]


# Nodes defined in the key=value syntax (values are strings until the options are read).
KEYVAL = [
    ("kv", lambda w: f"driver=raw,node-name=kv,offset=512,size=1048576,file.driver=file,file.filename={w / 'kv.img'}"),
    ("kn", lambda w: "driver=null-co,node-name=kn,size=65536,read-zeroes=on"),
]


def args(work):
    out = ["--object", "throttle-group,id=tg0,x-bps-total=1000000",
           "--object", "throttle-group,id=tg1,x-iops-total=50"]
    for _, definition in NODES:
        out += ["--blockdev", json.dumps(definition(work))]
    for _, definition in KEYVAL:
        out += ["--blockdev", definition(work)]
    return out


CASES = []
for node, _ in NODES + KEYVAL:
    CASES += [
        Case(f"query-named-block-nodes {node}", [Qmp("query-named-block-nodes", pick=pick_named(node))]),
        Case(f"query-named-block-nodes flat {node}", [Qmp("query-named-block-nodes", {"flat": True}, pick=pick_named(node))]),
        Case(f"query-blockstats query-nodes {node}", [Qmp("query-blockstats", {"query-nodes": True}, pick=pick_named(node))]),
    ]
CASES += [
    Case("x-debug-query-block-graph", [Qmp("x-debug-query-block-graph")]),
    Case("query-block without devices", [Qmp("query-block")]),
    Case("query-blockstats without devices", [Qmp("query-blockstats")]),
    Case("block-set-write-threshold then query", [
        Qmp("block-set-write-threshold", {"node-name": "r0", "write-threshold": 4 * MiB}),
        Qmp("query-named-block-nodes", pick=pick_named("r0"))]),
    Case("blockdev-add over QMP then query", [
        Qmp("blockdev-add", {"driver": "raw", "node-name": "live", "size": 65536,
                             "file": {"driver": "null-co", "size": 1048576, "latency-ns": 5}}),
        Qmp("query-named-block-nodes", pick=pick_named("live")),
        Qmp("query-blockstats", {"query-nodes": True}, pick=pick_named("live"))]),
    Case("block_resize of a read-only node", [Qmp("block_resize", {"node-name": "ro", "size": 4 * MiB})]),
    Case("block_resize of a raw window", [Qmp("block_resize", {"node-name": "rw", "size": 2 * MiB})]),
    Case("block_resize of a file under a raw window", [Qmp("block_resize", {"node-name": "rw/file", "size": 4 * MiB})]),
    Case("block_resize of a quorum child", [Qmp("block_resize", {"node-name": "qu/children.1", "size": 4 * MiB})]),
    Case("block_resize of a throttle node's file", [
        Qmp("block_resize", {"node-name": "t1/file", "size": 2 * MiB}), Qmp("query-named-block-nodes", pick=pick_named("t1"))]),
    Case("block_resize of a null-co node", [Qmp("block_resize", {"node-name": "n1", "size": 2 * MiB})]),
    Case("block_resize of a quorum", [Qmp("block_resize", {"node-name": "qv", "size": 2 * MiB})]),
    Case("block_resize of a throttle node", [
        Qmp("block_resize", {"node-name": "t1", "size": 3 * MiB}), Qmp("query-named-block-nodes", pick=pick_named("t1"))]),
    Case("block_resize of a blkdebug node", [Qmp("block_resize", {"node-name": "b2", "size": 3 * MiB})]),
    Case("blockdev-del of a generated node", [Qmp("blockdev-del", {"node-name": "q0/file"})]),
    Case("blockdev-del of a node a filter uses", [Qmp("blockdev-del", {"node-name": "n2"})]),
    Case("write threshold on a generated node", [
        Qmp("block-set-write-threshold", {"node-name": "nope", "write-threshold": 1}),
        Qmp("block-set-write-threshold", {"node-name": "r0", "write-threshold": 0}),
        Qmp("query-named-block-nodes", pick=pick_named("r0"))]),
]

GRAPH = Group("graph", args, CASES, prepare)
