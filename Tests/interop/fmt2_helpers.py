"""Shared checks of the vdi, vpc and vhdx interop tests (fmt2): images made and written by
qemu-img/qemu-io read identically through blockd, blockd's writes read back by qemu-img, blockd's
map equal to qemu-img's, and blockimg create/info/convert against qemu-img."""
import json
import random
import subprocess
from pathlib import Path

import nbd

from client_helpers import run
from test_blockimg import blockimg


def qemu_img(*args, ok: bool = True) -> subprocess.CompletedProcess:
    return run(["qemu-img", *args], ok=ok, timeout=120)


def qemu_io_file(fmt: str, image: Path, *commands: str) -> None:
    cmd = ["qemu-io", "-f", fmt]
    for c in commands:
        cmd += ["-c", c]
    run(cmd + [str(image)], timeout=120)


def export_args(fmt: str, image: Path, writable: bool, name: str = "disk0", suffix: str = "0") -> list[str]:
    ro = "" if writable else ",read-only=on"
    return ["--blockdev", f"driver=file,node-name=f{suffix},filename={image}{ro}",
            "--blockdev", f"driver={fmt},node-name=d{suffix},file=f{suffix}{ro}",
            "--export", f"type=nbd,id=e{suffix},node-name=d{suffix},name={name},writable={'on' if writable else 'off'}"]


def fill_with_qemu_io(fmt: str, image: Path, size: int, seed: int, count: int = 16) -> None:
    """Known patterns at random places (some crossing block boundaries) and one zero-write."""
    rng = random.Random(seed)
    commands = []
    for _ in range(count):
        length = rng.choice([512, 4096, 65536, 70000, 300000])
        offset = rng.randrange(0, size - length) // 512 * 512
        commands.append(f"write -P {rng.randrange(1, 255)} {offset} {length}")
    commands.append(f"write -z {size // 3 // 512 * 512} 200192")
    qemu_io_file(fmt, image, *commands)


def nbd_map(uri: str) -> list[tuple[int, int, int]]:
    """(offset, length, flags) of base:allocation over the whole export, merged."""
    h = nbd.NBD()
    h.add_meta_context("base:allocation")
    h.connect_uri(uri)
    size = h.get_size()
    entries: list[tuple[int, int, int]] = []

    def cb(metacontext, offset, extents, err):
        position = offset
        for i in range(0, len(extents), 2):
            entries.append((position, extents[i], extents[i + 1]))
            position += extents[i]
        return 0

    offset = 0
    while offset < size:
        before = len(entries)
        h.block_status(min(size - offset, 1 << 30), offset, cb)
        if len(entries) == before:
            break
        offset = entries[-1][0] + entries[-1][1]
    h.shutdown()
    return merge([(o, min(length, size - o), f) for o, length, f in entries if o < size])


def merge(entries):
    out = []
    for offset, length, flags in entries:
        if out and out[-1][2] == flags and out[-1][0] + out[-1][1] == offset:
            out[-1] = (out[-1][0], out[-1][1] + length, flags)
        else:
            out.append((offset, length, flags))
    return out


def qemu_map_as_nbd(fmt: str, image: Path) -> list[tuple[int, int, int]]:
    """qemu-img map of the image in NBD's terms: hole where not data, zero where zero."""
    entries = json.loads(qemu_img("map", "-f", fmt, "--output=json", str(image)).stdout)
    return merge([(e["start"], e["length"], (0 if e["data"] else nbd.STATE_HOLE) | (nbd.STATE_ZERO if e["zero"] else 0))
                  for e in entries])


def random_nbd_writes(uri: str, reference: Path, size: int, seed: int, ops: int = 40, trims: bool = True) -> None:
    """Writes, zero-writes (with and without NO_HOLE) and trims through NBD, mirrored into a raw
    reference file (a trim leaves the bytes unspecified, so the reference takes what the export reads)."""
    rng = random.Random(seed)
    h = nbd.NBD()
    h.connect_uri(uri)
    with open(reference, "r+b") as ref:
        for _ in range(ops):
            op = rng.choice(["write", "write", "write", "zero", "trim"] if trims else ["write", "write", "zero"])
            length = rng.choice([512, 4096, 65536, 131072, 1 << 20, 3 << 20])
            length = min(length, size)
            offset = rng.randrange(0, size - length + 1) // 512 * 512
            if op == "write":
                data = bytes([rng.randrange(1, 256)]) * length
                h.pwrite(data, offset)
                ref.seek(offset)
                ref.write(data)
            elif op == "zero":
                h.zero(length, offset, nbd.CMD_FLAG_NO_HOLE if rng.random() < 0.5 else 0)
                ref.seek(offset)
                ref.write(b"\0" * length)
            else:
                h.trim(length, offset)
                ref.seek(offset)
                ref.write(h.pread(length, offset))
        h.flush()
    h.shutdown()


def info_json(tool, fmt: str, image: Path) -> dict:
    proc = tool("info", "-f", fmt, "--output=json", str(image))
    info = json.loads(proc.stdout)
    info.pop("actual-size", None)
    info["filename"] = Path(info["filename"]).name
    return info


def formatting_line(tool, fmt: str, image: Path, size: str, options: str) -> str:
    args = ["create", "-f", fmt] + (["-o", options] if options else []) + [str(image), size]
    return tool(*args).stdout.strip()


def compare_create(tmp_path: Path, fmt: str, options: str, size: str = "5M") -> tuple[Path, Path]:
    """blockimg create and qemu-img create with the same options: the same Formatting line and the
    same info; each readable by the other tool as all zeroes."""
    ours, theirs = tmp_path / f"ours.{fmt}", tmp_path / f"theirs.{fmt}"
    line_ours = formatting_line(blockimg, fmt, ours, size, options)
    line_theirs = formatting_line(qemu_img, fmt, theirs, size, options)
    assert line_ours.replace(str(ours), "X") == line_theirs.replace(str(theirs), "X")
    assert info_json(qemu_img, fmt, ours) == info_json(qemu_img, fmt, theirs) | {"filename": ours.name}
    assert info_json(blockimg, fmt, ours) == info_json(qemu_img, fmt, ours)
    assert ours.stat().st_size == theirs.stat().st_size
    return ours, theirs


def convert_round_trip(tmp_path: Path, fmt: str, source: Path, source_fmt: str, options: str = "") -> Path:
    """blockimg convert -O fmt and back to raw: byte for byte what qemu-img reads from the source;
    qemu-img reads the converted image identically too."""
    converted = tmp_path / f"converted.{fmt}"
    back = tmp_path / "back.raw"
    args = ["convert", "-f", source_fmt, "-O", fmt] + (["-o", options] if options else []) + [str(source), str(converted)]
    blockimg(*args)
    blockimg("convert", "-f", fmt, "-O", "raw", str(converted), str(back))
    expected = tmp_path / "expected.raw"
    qemu_img("convert", "-f", source_fmt, "-O", "raw", str(source), str(expected))
    size = expected.stat().st_size
    assert back.read_bytes()[:size] == expected.read_bytes()
    assert back.read_bytes()[size:].count(0) == back.stat().st_size - size
    assert qemu_img("compare", "-f", fmt, "-F", "raw", str(converted), str(expected)).returncode == 0
    return converted


def corrupt(image: Path, offset: int, data: bytes) -> None:
    with open(image, "r+b") as f:
        f.seek(offset)
        f.write(data)


def fio_verify_round_trip(start_blockd, tmp_path: Path, fmt: str, image: Path, size: int) -> None:
    """fio writes random blocks through the export with crc32c verification; what the export then
    reads equals what qemu-img reads from the file after blockd stopped."""
    daemon = start_blockd(args=export_args(fmt, image, writable=True))
    run(["fio", "--name=verify", "--ioengine=nbd", f"--uri={daemon.uri()}", "--rw=randwrite", "--bs=64k",
         "--iodepth=16", f"--size={size}", "--verify=crc32c", "--do_verify=1", "--randseed=7", "--verify_state_save=0"], timeout=120)
    through_nbd = tmp_path / "through-nbd.raw"
    qemu_img("convert", "-f", "raw", "-O", "raw", daemon.uri(), str(through_nbd))
    daemon.stop()
    assert qemu_img("compare", "-f", fmt, "-F", "raw", str(image), str(through_nbd)).returncode == 0
