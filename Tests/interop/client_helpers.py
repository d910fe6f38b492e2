"""Small helpers shared by the test_clients*.py files: run a client, check its output, look at files."""
import json
import os
import shlex
import socket
import subprocess
import time
from pathlib import Path

KiB = 1024
MiB = 1024 * 1024


def run(cmd, *, ok: bool = True, timeout: float = 30, env=None, cwd=None) -> subprocess.CompletedProcess:
    """Runs a client; with ok=True it must exit 0 (the failure message shows the command and its output)."""
    cmd = [str(c) for c in cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if ok:
        assert proc.returncode == 0, (
            f"{shlex.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def output(proc: subprocess.CompletedProcess) -> str:
    return (proc.stdout or "") + (proc.stderr or "")


def qemu_io(uri: str, *commands: str, ok: bool = True, read_only: bool = False, timeout: float = 30):
    """`qemu-io -f raw URI -c ... -c ...`; with ok=True every command must succeed (qemu-io prints
    'failed' for a failed command or a pattern mismatch, and exits non-zero)."""
    cmd = ["qemu-io", "-f", "raw", *(["-r"] if read_only else []), uri]
    for c in commands:
        cmd += ["-c", c]
    proc = run(cmd, ok=False, timeout=timeout)
    if ok:
        text = output(proc)
        assert proc.returncode == 0 and "failed" not in text and "mismatch" not in text, (
            f"{shlex.join(cmd)} exited {proc.returncode}\n{text}")
    return proc


def qemu_img_info(uri: str) -> dict:
    return json.loads(run(["qemu-img", "info", "--output=json", uri]).stdout)


def nbdinfo_json(*args: str) -> dict:
    return json.loads(run(["nbdinfo", "--json", *args]).stdout)


def read_file(path: Path, offset: int = 0, length: int | None = None) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read() if length is None else f.read(length)


def file_extents(path: Path) -> list[tuple[int, int, bool]]:
    """(offset, length, is_data) runs of a file as SEEK_DATA / SEEK_HOLE describe it."""
    size = os.path.getsize(path)
    runs: list[tuple[int, int, bool]] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: a hole to the end
                data = size
            if data > pos:
                runs.append((pos, min(data, size) - pos, False))
                pos = min(data, size)
                continue
            hole = min(os.lseek(fd, pos, os.SEEK_HOLE), size)
            runs.append((pos, hole - pos, True))
            pos = hole
    finally:
        os.close(fd)
    return runs


def is_hole(path: Path, offset: int, length: int) -> bool:
    """True when [offset, offset+length) lies entirely in holes of the file."""
    return all(not data or end <= offset or start >= offset + length
               for start, run, data in file_extents(path) for end in [start + run])


def merge_map(entries: list[tuple[int, int, object]]) -> list[tuple[int, int, object]]:
    """Merges adjacent runs of the same kind."""
    merged: list[tuple[int, int, object]] = []
    for off, length, kind in entries:
        if merged and merged[-1][2] == kind and merged[-1][0] + merged[-1][1] == off:
            merged[-1] = (merged[-1][0], merged[-1][1] + length, kind)
        else:
            merged.append((off, length, kind))
    return merged


def nbdinfo_map(uri: str) -> list[dict]:
    return json.loads(run(["nbdinfo", "--map", "--json", uri]).stdout)


def ipv6_loopback_available() -> str | None:
    """None when ::1 can be bound, else the reason it cannot."""
    if not socket.has_ipv6:
        return "python has no IPv6 support"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError as e:
        return f"cannot bind ::1: {e}"
    return None


def free_port6() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        return s.getsockname()[1]


def wait_connectable(family: int, address, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(0.2)
                s.connect(address)
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def pattern_image(path: Path, size: int, chunks: list[tuple[int, int]]) -> bytes:
    """A sparse file of `size` bytes with random data only in `chunks` (offset, length); returns its bytes."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, length in chunks:
            f.seek(off)
            f.write(os.urandom(length))
    return read_file(path)


def nbd_outcome(operation) -> str:
    """"ok", or the errno name libnbd reports for the NBD error of the reply."""
    import nbd
    try:
        operation()
        return "ok"
    except nbd.Error as error:
        return error.errno or str(error)
