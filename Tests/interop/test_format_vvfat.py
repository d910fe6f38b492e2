"""The vvfat driver against QEMU's: the disk blockd presents for a host directory equals, byte for
byte, the disk `qemu-img convert -f vvfat fat:...` reads (FAT12, FAT16, FAT32, floppies, labels),
except the slack after a file's last byte, which QEMU fills with whatever its cluster buffer held
and blockd with zeroes; `fsck.fat -n` finds the file system clean and mtools reads every file back
with its content; refusals (write-back `rw`, writable opens, bad options) are worded as QEMU's."""
import os
import subprocess
from pathlib import Path

import pytest

from client_helpers import output, run
from conftest import blockd_binary, require

CLUSTER = 8192


def make_tree(root: Path, odd_sizes: bool) -> dict[str, bytes]:
    """A directory with subdirectories, long and colliding names, an empty file; with odd_sizes,
    files whose last cluster is partly slack. Returns the files by relative path."""
    files = {
        "data.bin": os.urandom(2 * CLUSTER),
        "Long File Name.txt": os.urandom(CLUSTER),
        "UPPER.TXT": os.urandom(CLUSTER),
        "verylongname.text": os.urandom(CLUSTER),
        "verylongname.tex2": os.urandom(CLUSTER),
        "a.b.c": os.urandom(CLUSTER),
        ".hidden": os.urandom(CLUSTER),
        "ünïcode ñame.txt": os.urandom(CLUSTER),
        "empty": b"",
        "sub/README.MD": os.urandom(3 * CLUSTER),
        "sub/x.y.z": os.urandom(CLUSTER),
        "sub/deeper/leaf.dat": os.urandom(CLUSTER),
        "sub/deeper/another file with a very long name indeed.data": os.urandom(CLUSTER),
    }
    if odd_sizes:
        files.update({"odd.dat": os.urandom(1000), "sub/tiny": b"x", "sub/deeper/big.bin": os.urandom(5 * CLUSTER + 77)})
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def blockd_disk(tmp_path: Path, options: str, name: str) -> tuple[Path, str]:
    """The whole disk blockd exports for these vvfat options (read with nbdcopy), and blockd's log."""
    sock = tmp_path / f"{name}.sock"
    log = tmp_path / f"{name}.log"
    out = tmp_path / f"{name}.blockd"
    with open(log, "wb") as sink:
        proc = subprocess.Popen([blockd_binary(), "--blockdev", f"driver=vvfat,node-name=v,read-only=on,{options}",
                                 "--nbd-server", f"addr.type=unix,addr.path={sock}",
                                 "--export", "type=nbd,id=e,node-name=v,name=v"], stdout=sink, stderr=subprocess.STDOUT)
    try:
        for _ in range(500):
            if sock.exists() or proc.poll() is not None:
                break
            subprocess.run(["sleep", "0.02"])
        assert proc.poll() is None, log.read_text()
        run(["nbdcopy", f"nbd+unix:///v?socket={sock}", out], timeout=60)
    finally:
        proc.terminate()
        assert proc.wait(15) == 0, log.read_text()
    return out, log.read_text()


def qemu_disk(tmp_path: Path, filename: str, name: str) -> Path:
    out = tmp_path / f"{name}.qemu"
    run(["qemu-img", "convert", "-f", "vvfat", "-O", "raw", filename, out], timeout=60)
    return out


def differences(ours: Path, theirs: Path) -> list[tuple[int, int, int]]:
    """The bytes where two disks of the same size differ: (offset, ours, theirs), by `cmp -l`."""
    assert ours.stat().st_size == theirs.stat().st_size
    proc = run(["cmp", "-l", ours, theirs], ok=False, timeout=60)
    assert proc.returncode in (0, 1), output(proc)
    return [(int(a) - 1, int(b, 8), int(c, 8)) for a, b, c in (line.split() for line in proc.stdout.splitlines())]


CASES = [
    ("fat16-default", "", "fat:16:{dir}"),
    ("fat12", "fat-type=12", "fat:12:{dir}"),
    ("fat32", "fat-type=32", "fat:32:{dir}"),
    ("floppy", "floppy=on", "fat:floppy:{dir}"),
    ("floppy12", "floppy=on,fat-type=12", "fat:floppy:12:{dir}"),
    ("floppy16", "floppy=on,fat-type=16", "fat:floppy:16:{dir}"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_same_disk_as_qemu(tmp_path, case):
    """Files that fill their clusters: QEMU's layout is fully deterministic, so the disks are equal."""
    require("qemu-img", "nbdcopy")
    name, options, filename = case
    root = tmp_path / "tree"
    make_tree(root, odd_sizes=False)
    ours, _ = blockd_disk(tmp_path, f"dir={root}" + (f",{options}" if options else ""), name)
    theirs = qemu_disk(tmp_path, filename.format(dir=root), name)
    diff = differences(ours, theirs)
    assert not diff, f"the disks differ in {len(diff)} bytes, first at sector {diff[0][0] // 512}"


def test_label_as_qemu(tmp_path):
    """A label is in the boot sector and the root's volume entry, as `label=` puts it in QEMU."""
    require("qemu-storage-daemon", "nbdcopy")
    root = tmp_path / "tree"
    make_tree(root, odd_sizes=False)
    ours, _ = blockd_disk(tmp_path, f"dir={root},fat-type=12,label=MY DISK", "label")
    sock = tmp_path / "qsd.sock"
    qsd = subprocess.Popen(["qemu-storage-daemon", "--blockdev",
                            f"driver=vvfat,node-name=v,read-only=on,dir={root},fat-type=12,label=MY DISK",
                            "--nbd-server", f"addr.type=unix,addr.path={sock}",
                            "--export", "type=nbd,id=e,node-name=v,name=v"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(500):
            if sock.exists():
                break
            subprocess.run(["sleep", "0.02"])
        run(["nbdcopy", f"nbd+unix:///v?socket={sock}", tmp_path / "label.qsd"], timeout=60)
    finally:
        qsd.terminate()
        qsd.wait(15)
    assert b"MY DISK    " in ours.read_bytes()[:64 * 1024]
    assert not differences(ours, tmp_path / "label.qsd")


def partition(disk: Path, image: Path, floppy: bool) -> None:
    """Copies the FAT file system of a disk (after the MBR's 63 sectors, or the whole floppy) to `image`."""
    run(["dd", f"if={disk}", f"of={image}", "bs=512", f"skip={0 if floppy else 63}", "conv=sparse", "status=none"])


@pytest.mark.parametrize("fat_type,floppy", [(16, False), (12, False), (12, True)])
def test_odd_files_fsck_and_mtools(tmp_path, fat_type, floppy):
    """With files that end inside a cluster: blockd's disk differs from QEMU's only in slack bytes
    (where blockd has zeroes), fsck.fat finds it clean, and mtools reads back every file."""
    require("qemu-img", "nbdcopy", "fsck.fat", "mdir", "mcopy")
    root = tmp_path / "tree"
    files = make_tree(root, odd_sizes=True)
    options = f"dir={root},fat-type={fat_type}" + (",floppy=on" if floppy else "")
    ours, _ = blockd_disk(tmp_path, options, "odd")
    theirs = qemu_disk(tmp_path, f"fat:{'floppy:' if floppy else ''}{fat_type}:{root}", "odd")
    slack = sum(-len(data) % CLUSTER for data in files.values() if data)
    diff = differences(ours, theirs)
    assert all(mine == 0 for _, mine, _ in diff), "blockd differs from QEMU outside the slack of files"
    assert len(diff) <= slack
    image = tmp_path / "fs.img"
    partition(ours, image, floppy)
    check = run(["fsck.fat", "-n", image], ok=False)
    assert check.returncode == 0, output(check)
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1", MTOOLS_LOWER_CASE="0")
    listing = run(["mdir", "-i", image, "-/", "-b", "::"], env=env).stdout
    for name, data in files.items():
        assert f"::/{name}" in listing, (name, listing)
        copied = run(["mcopy", "-n", "-i", image, f"::/{name}", tmp_path / "copy"], env=env)
        assert (tmp_path / "copy").read_bytes() == data, name
        (tmp_path / "copy").unlink()
    assert copied.returncode == 0


def test_live_contents(tmp_path):
    """A file's bytes are read from the host when read, as QEMU reads them."""
    require("nbdsh")
    import nbd
    root = tmp_path / "tree"
    root.mkdir()
    (root / "file.bin").write_bytes(b"A" * CLUSTER)
    sock = tmp_path / "live.sock"
    proc = subprocess.Popen([blockd_binary(), "--blockdev", f"driver=vvfat,node-name=v,read-only=on,dir={root}",
                             "--nbd-server", f"addr.type=unix,addr.path={sock}",
                             "--export", "type=nbd,id=e,node-name=v,name=v"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(500):
            if sock.exists():
                break
            subprocess.run(["sleep", "0.02"])
        h = nbd.NBD()
        h.connect_uri(f"nbd+unix:///v?socket={sock}")
        disk = h.pread(h.get_size() // 512 // 64 * 0 + 2 * 1024 * 1024, 0)
        where = disk.index(b"A" * CLUSTER)
        (root / "file.bin").write_bytes(b"B" * CLUSTER)
        assert h.pread(CLUSTER, where) == b"B" * CLUSTER
        h.shutdown()
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


@pytest.mark.parametrize("options,message", [
    ("rw=on", "rw"),
    ("fat-type=13", "Valid FAT types are only 12, 16 and 32"),
    ("label=ABCDEFGHIJKL", "vvfat label cannot be longer than 11 bytes"),
])
def test_refusals(tmp_path, options, message):
    root = tmp_path / "tree"
    root.mkdir()
    proc = run([blockd_binary(), "--blockdev", f"driver=vvfat,node-name=v,read-only=on,dir={root},{options}",
                "--nbd-server", f"addr.type=unix,addr.path={tmp_path}/x.sock"], ok=False, timeout=30)
    assert proc.returncode == 1 and message in output(proc), output(proc)


def test_writable_open_refused_as_qemu(tmp_path):
    require("qemu-storage-daemon")
    root = tmp_path / "tree"
    root.mkdir()
    option = f"driver=vvfat,node-name=v,dir={root}"
    theirs = run(["qemu-storage-daemon", "--blockdev", option], ok=False, timeout=30)
    ours = run([blockd_binary(), "--blockdev", option,
                "--nbd-server", f"addr.type=unix,addr.path={tmp_path}/x.sock"], ok=False, timeout=30)
    assert "Image is read-only" in output(theirs)
    assert ours.returncode == 1 and "Image is read-only" in output(ours), output(ours)


def test_directory_that_does_not_fit(tmp_path):
    """More data than a 1.44 MB floppy holds is refused with QEMU's message."""
    require("qemu-img")
    root = tmp_path / "tree"
    root.mkdir()
    (root / "big").write_bytes(os.urandom(2 * 1024 * 1024))
    theirs = run(["qemu-img", "info", f"fat:floppy:12:{root}"], ok=False)
    ours = run([blockd_binary(), "--blockdev", f"driver=vvfat,node-name=v,read-only=on,dir={root},floppy=on,fat-type=12",
                "--nbd-server", f"addr.type=unix,addr.path={tmp_path}/x.sock"], ok=False, timeout=30)
    assert "Directory does not fit in FAT12" in output(theirs)
    assert ours.returncode == 1 and "Directory does not fit in FAT12 (capacity 1.44 MB)" in output(ours), output(ours)


def test_symbolic_link_loop_refused(tmp_path):
    """A directory that contains itself through a symbolic link is refused at once (QEMU follows it
    until the disk is full and then refuses)."""
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "up").symlink_to("..")
    proc = run([blockd_binary(), "--blockdev", f"driver=vvfat,node-name=v,read-only=on,dir={root}",
                "--nbd-server", f"addr.type=unix,addr.path={tmp_path}/x.sock"], ok=False, timeout=30)
    assert proc.returncode == 1 and "contains itself through a symbolic link" in output(proc), output(proc)
