"""Shared helpers of the qed, qcow and parallels interop tests: qemu-img/qemu-io wrappers, blockd
exports of a format node, and allocation maps from both sides in one shape."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from client_helpers import run


def blockimg_binary() -> str:
    if os.environ.get("BLOCKIMG"):
        return os.environ["BLOCKIMG"]
    if os.environ.get("BLOCKD"):
        candidate = Path(os.environ["BLOCKD"]).with_name("blockimg")
        if candidate.exists():
            return str(candidate)
    for build in ("release", "debug"):
        candidate = Path(__file__).resolve().parents[2] / ".build" / build / "blockimg"
        if candidate.exists():
            return str(candidate)
    pytest.fail("no blockimg binary: run 'swift build --product blockimg' or set BLOCKIMG")


def qemu_img(*args, ok: bool = True) -> subprocess.CompletedProcess:
    return run(["qemu-img", *args], ok=ok, timeout=120)


def blockimg(*args, ok: bool = True) -> subprocess.CompletedProcess:
    return run([blockimg_binary(), *args], ok=ok, timeout=120)


def qemu_io(image, fmt: str, *commands: str, ok: bool = True) -> subprocess.CompletedProcess:
    cmd = ["qemu-io", "-f", fmt]
    for c in commands:
        cmd += ["-c", c]
    return run(cmd + [str(image)], ok=ok, timeout=120)


def export_args(image: Path, fmt: str, writable: bool, extra: str = "", name: str = "disk0", index: int = 0) -> list[str]:
    ro = "" if writable else ",read-only=on"
    return ["--blockdev", f"driver=file,node-name=f{index},filename={image}{ro}",
            "--blockdev", f"driver={fmt},node-name={name},file=f{index}{ro}{extra}",
            "--export", f"type=nbd,id=e{index},node-name={name},name={name},writable={'on' if writable else 'off'}"]


def _runs(pairs):
    """Merges (start, length, state) triples into maximal runs."""
    merged = []
    for start, length, state in pairs:
        if length == 0:
            continue
        if merged and merged[-1][2] == state and merged[-1][0] + merged[-1][1] == start:
            merged[-1] = (merged[-1][0], merged[-1][1] + length, state)
        else:
            merged.append((start, length, state))
    return merged


def qemu_map(image: Path, fmt: str):
    """qemu-img map as (start, length, (zero, data)) runs; unallocated and zero ranges are 'zero'."""
    entries = json.loads(qemu_img("map", "-f", fmt, "--output=json", str(image)).stdout)
    return _runs([(e["start"], e["length"], (e["zero"], e["data"])) for e in entries])


def nbd_map(uri: str):
    """nbdinfo --map of the export in the same shape: zero from the zero flag, data from not-hole."""
    entries = json.loads(run(["nbdinfo", "--map", "--json", uri]).stdout)
    return _runs([(e["offset"], e["length"], (bool(e["type"] & 2), not e["type"] & 1)) for e in entries])


def info_json(tool, image: Path, fmt: str | None = None) -> dict:
    args = ["info", "--output=json"] + (["-f", fmt] if fmt else []) + [str(image)]
    info = json.loads(tool(*args).stdout)
    info.pop("actual-size", None)
    return info


def check_json(tool, image: Path, *extra: str) -> tuple[int, dict]:
    """(exit code, ImageCheck without its filename) of `check --output=json`."""
    proc = tool("check", "--output=json", *extra, str(image), ok=False)
    if not proc.stdout.strip().startswith("{"):
        return proc.returncode, {"output": proc.stdout + proc.stderr}
    report = json.loads(proc.stdout)
    report.pop("filename", None)
    return proc.returncode, report


def fio_verify(uri: str, size: int = 8 << 20) -> None:
    """fio's nbd engine: random writes with crc32c verify at queue depth 16, then a verify pass;
    fails when any block reads back differently (concurrent allocating writes included)."""
    run(["fio", "--name=verify", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite", "--bs=4k,64k",
         "--bsrange=4k-64k", "--iodepth=16", f"--size={size}", "--verify=crc32c", "--verify_fatal=1",
         "--do_verify=1", "--randrepeat=0", "--verify_state_save=0"], timeout=120)
