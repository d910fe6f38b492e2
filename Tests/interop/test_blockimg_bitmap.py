"""blockimg bitmap (issue #12) against qemu-img bitmap: the same operations (and the same mistakes)
on two copies of an image give the same exit status and message, the same `qemu-img info` bitmap
listing after every step, and the same bits (read over NBD through qemu-nbd, by nbdinfo); what
blockimg wrote qemu-img changes further, and the other way round."""
import json
import re
import shutil
from pathlib import Path

from client_helpers import run
from conftest import require

MiB = 1 << 20

# {img}: the image under test; {other}: a second image with bitmap 'x'. (arguments, expect success)
STEPS = [
    (["--add", "{img}", "b1"], True),
    (["--add", "-g", "4096", "--disable", "{img}", "b2"], True),
    (["--merge", "src", "{img}", "b1"], True),
    (["--merge", "x", "-b", "{other}", "-F", "qcow2", "{img}", "b2"], True),
    (["--add", "--merge", "src", "{img}", "b3"], True),
    (["--add", "-g", "512", "--disable", "--merge", "b2", "{img}", "b4"], True),
    (["--clear", "{img}", "src"], True),
    (["--enable", "{img}", "b2"], True),
    (["--disable", "{img}", "b1"], True),
    (["--remove", "{img}", "src"], True),
    (["--merge", "x", "-b", "{other}", "{img}", "b3"], True),
    # Mistakes: nothing changes.
    (["--add", "{img}", "b1"], False),
    (["{img}", "b1"], False),
    (["-g", "4096", "--clear", "{img}", "b1"], False),
    (["--clear", "-F", "qcow2", "{img}", "b1"], False),
    (["--clear", "-b", "{other}", "{img}", "b1"], False),
    (["--add", "{img}"], False),
    (["--remove", "{img}", "zz"], False),
    (["--clear", "{img}", "zz"], False),
    (["--add", "-g", "1000", "{img}", "g"], False),
    (["--add", "-g", "256", "{img}", "g"], False),
    (["--merge", "zz", "{img}", "b1"], False),
    (["--merge", "zz", "-b", "{other}", "{img}", "b1"], False),
    (["--add", "{img}", ""], False),
    (["--add", "{img}", "n" * 1024], False),
    (["--enable", "--remove", "--clear", "{img}", "b4"], False),
]


def listing(image: Path) -> list:
    info = json.loads(run(["qemu-img", "info", "--output=json", "-U", str(image)]).stdout)
    return info["format-specific"]["data"].get("bitmaps", [])


def bits(image: Path, name: str) -> list:
    """The bitmap as nbdinfo maps it, exported read-only by qemu-nbd."""
    out = run(["nbdinfo", "--json", f"--map=qemu:dirty-bitmap:{name}", "--",
               "[", "qemu-nbd", "-r", "-f", "qcow2", "-B", name, str(image), "]"]).stdout
    return [(e["offset"], e["length"], e["type"]) for e in json.loads(out)]


def message(proc) -> str:
    text = proc.stderr.strip()
    for prefix in ("qemu-img: ", "blockimg: "):
        text = text.replace(prefix, "")
    # An image's node has a generated name, different in each program.
    return re.sub(r"'#block[0-9]+'|'[a-z0-9_-]*#[0-9]+'", "NODE", text)


def test_blockimg_bitmap_as_qemu_img(tmp_path):
    require("qemu-img", "qemu-io", "qemu-nbd", "nbdinfo")
    from test_blockimg import blockimg_binary
    base = tmp_path / "base.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), str(64 * MiB)])
    run(["qemu-img", "bitmap", "--add", "-g", "16k", str(base), "src"])
    run(["qemu-io", "-f", "qcow2", "-c", "write 1M 4k", "-c", "write 10M 100k", "-c", "write 63M 1M", str(base)])
    other = tmp_path / "other.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(other), str(64 * MiB)])
    run(["qemu-img", "bitmap", "--add", "-g", "8k", str(other), "x"])
    run(["qemu-io", "-f", "qcow2", "-c", "write 5M 12k", "-c", "write 20M 3M", str(other)])
    tools = {"qemu-img": "qemu-img", "blockimg": blockimg_binary()}
    images = {}
    for key in tools:
        images[key] = tmp_path / f"{key}.qcow2"
        shutil.copy(base, images[key])
    for index, (arguments, succeeds) in enumerate(STEPS):
        got = {}
        for key, tool in tools.items():
            argv = [a.format(img=images[key], other=other) for a in arguments]
            proc = run([tool, "bitmap", *argv], ok=False)
            got[key] = (proc.returncode, message(proc).replace(str(images[key]), "IMG"), listing(images[key]))
        assert got["blockimg"] == got["qemu-img"], f"step {index} {arguments}"
        assert (got["qemu-img"][0] == 0) == succeeds, (arguments, got["qemu-img"])
    names = [b["name"] for b in listing(images["qemu-img"])]
    assert names
    for name in names:
        assert bits(images["blockimg"], name) == bits(images["qemu-img"], name), name
    # Each tool goes on with what the other wrote.
    for key, tool in tools.items():
        other_image = images["qemu-img" if key == "blockimg" else "blockimg"]
        run([tool, "bitmap", "--clear", "--disable", str(other_image), "b2"])
        run(["qemu-img", "check", "-q", str(other_image)])
    assert listing(images["qemu-img"]) == listing(images["blockimg"])
