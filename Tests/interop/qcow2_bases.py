"""The pristine qcow2 images the corrupt-image catalogue damages, made by qemu-img and qemu-io: small,
and holding every kind of metadata (data, zero and compressed clusters, several L2 tables, an
internal snapshot, a persistent bitmap, a backing chain, version 2, 1- and 64-bit refcounts)."""
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

from qcow2_layout import Layout, parse

MiB = 1 << 20


@dataclass
class Base:
    """One pristine image: its file, parsed layout and the guest data qemu-img reads from it."""
    name: str
    path: Path
    layout: Layout
    guest: bytes


def _run(*cmd) -> None:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}{proc.stderr}"


def _io(image: Path, *commands: str, fmt: str = "qcow2") -> None:
    args = ["qemu-io", "-f", fmt]
    for c in commands:
        args += ["-c", c]
    _run(*args, image)


def _noise(path: Path, rng: random.Random, size: int) -> Path:
    path.write_bytes(rng.randbytes(size))
    return path


# Each recipe: (name, qemu-img create options, virtual size, qemu-io commands run in order); the
# commands may name "{noise}" (random bytes), "snapshot" (qemu-img snapshot -c s1) or "bitmap".
RECIPES = [
    ("v3-64k", "compat=1.1,cluster_size=65536", 4 * MiB, [
        "write -s {noise} 0 192k", "write -s {noise} 1M 64k", "write -s {noise} 3M 100k",
        "write -s {noise} 512k 128k", "write -z 512k 128k", "write -c -P 0x33 2M 64k",
        "snapshot", "write -s {noise} 64k 64k", "bitmap"]),
    ("v3-4k", "compat=1.1,cluster_size=4096", 4 * MiB, [
        "write -s {noise} 0 20k", "write -s {noise} 100k 8k", "write -s {noise} 2M 12k",
        "write -s {noise} 3M 4k", "write -s {noise} 40k 8k", "write -z 40k 8k", "write -c -P 0x44 64k 4k",
        "write -s {noise} 4092k 4k"]),
    ("v2-64k", "compat=0.10,cluster_size=65536", 4 * MiB, [
        "write -s {noise} 0 128k", "write -s {noise} 2M 64k", "snapshot", "write -s {noise} 0 64k"]),
    ("rc1-4k", "compat=1.1,cluster_size=4096,refcount_bits=1", 4 * MiB, [
        "write -s {noise} 0 16k", "write -s {noise} 1M 8k", "write -s {noise} 2100k 8k"]),
    ("rc64-64k", "compat=1.1,cluster_size=65536,refcount_bits=64", 4 * MiB, [
        "write -s {noise} 0 128k", "write -c -P 0x55 1M 64k", "write -s {noise} 2M 64k", "snapshot"]),
]


def build_bases(directory: Path, seed: int = 10) -> dict[str, Base]:
    """Makes every pristine image in `directory` (the raw base and middle layer of the backing
    chain too) and reads their guest data with qemu-img convert."""
    rng = random.Random(seed)
    bases: dict[str, Base] = {}
    for name, options, size, steps in RECIPES:
        image = directory / f"{name}.qcow2"
        _run("qemu-img", "create", "-q", "-f", "qcow2", "-o", options, image, size)
        for step in steps:
            if step == "snapshot":
                _run("qemu-img", "snapshot", "-c", "s1", image)
            elif step == "bitmap":
                _run("qemu-img", "bitmap", "--add", image, "b0")
            else:
                noise = _noise(directory / "noise.bin", rng, 256 << 10)
                _io(image, step.format(noise=noise))
        bases[name] = _load(name, image)
    bases["overlay"] = _load("overlay", _backing_chain(directory, rng))
    return bases


def _backing_chain(directory: Path, rng: random.Random) -> Path:
    """overlay.qcow2 -> mid.qcow2 -> base.raw, each layer with data of its own."""
    raw = directory / "base.raw"
    with open(raw, "wb") as f:
        f.truncate(4 * MiB)
        for offset in (0, MiB, 3 * MiB):
            f.seek(offset)
            f.write(rng.randbytes(256 << 10))
    mid = directory / "mid.qcow2"
    _run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", "-b", "base.raw", "-F", "raw", mid)
    noise = _noise(directory / "noise.bin", rng, 256 << 10)
    _io(mid, f"write -s {noise} 64k 128k")
    overlay = directory / "overlay.qcow2"
    _run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", "-b", "mid.qcow2", "-F", "qcow2",
         overlay)
    _io(overlay, f"write -s {noise} 128k 64k", "write -z 1M 64k", f"write -s {noise} 2M 64k")
    return overlay


def _load(name: str, image: Path) -> Base:
    raw = image.with_suffix(".pristine.raw")
    _run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, raw)
    guest = raw.read_bytes()
    raw.unlink()
    return Base(name, image, parse(image.read_bytes()), guest)
