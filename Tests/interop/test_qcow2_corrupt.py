"""A catalogue of damaged qcow2 images (qcow2_mutations.py: about 600 cases, 5,000 with --long),
each opened and read in full by blockd and by QEMU, with QEMU's verdict as the reference.

How a case runs: the damaged copy is opened through QMP `blockdev-add` (qcow2 over file, read-only)
on a long-lived blockd and on a long-lived qemu-storage-daemon (QEMU's block layer, the one
qemu-img uses; a daemon gives a verdict per chunk where `qemu-img convert` stops at the first
error), exported over NBD and read in 64 KiB chunks (all of the first 4 MiB; for a larger image
also its middle and last chunk), with 20 s for everything. A daemon that dies or hangs is replaced
before the next case. Some cases are also opened writable: a few writes and a flush through
blockd, then `qemu-img check`.

The rule, per case:
  * blockd never dies (signal or exit), never takes longer than 20 s, never logs a Swift fatal error;
  * blockd may always refuse the image at open (a refused `blockdev-add`); where the qcow2 spec
    says an implementation must refuse (another magic or version, unknown incompatible feature
    bits, clusters under 512 bytes, refcounts over 64 bits; and encryption, unimplemented), it must;
    a refusal by command-line options exits non-zero with a message, not by a signal (checked for
    a sample of the refused cases);
  * where both opened the image, the sizes agree, and each chunk blockd reads is either an error
    or byte-identical to what QEMU read for that chunk;
  * where QEMU failed the chunk (also when asked again on a fresh open: QEMU stops serving an
    image it found corrupt) or refused the image, a chunk blockd reads must be the pristine
    image's data for it (zeros past its end), that is, the damage did not change it; an error is
    always accepted;
  * after writes through blockd, `qemu-img check` finds no more corruptions than it found before
    or than it finds after QEMU (qemu-io) made the same writes (an image qemu-img could open
    before must stay openable; a corrupt flag blockd set is not counted); an error reply to a
    write is fine.
QEMU 7.2 recurses without end on a backing file that names the image itself, so there blockd is
only required not to die or hang.

Run one case: QCOW2_CASE='v3-64k/l1[0]=eof' pytest Tests/interop/test_qcow2_corrupt.py
(the value is a substring of the case ids printed in a failure; add --long for a case that only
the long catalogue has)."""
import json
import os
import subprocess
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import blockd_binary, require
from qcow2_bases import build_bases
from qcow2_mutations import Case, catalogue
from qcow2_prober import CHUNK, DEADLINE, Outcome, Prober

GROUPS = ["header", "l1", "l2", "l2-compressed", "reftable", "refcount-block", "snapshot", "snapshot-l1",
          "backing", "extension", "flip"]
WRITES = [(0, b"\xa5" * 4096), (3 * CHUNK + 512, b"\x5a" * 4096), (1 << 20, b"\xc3" * CHUNK),
          ((3 << 20) + 4096, b"\x3c" * 8192)]


class Catalogue:
    """The pristine bases, the cases, and the two daemons that read them."""

    def __init__(self, directory: Path, long: bool):
        self.directory = directory
        self.bases = build_bases(directory)
        self.cases = catalogue(self.bases, str(directory), long=long)
        only = os.environ.get("QCOW2_CASE")
        if only:
            self.cases = [c for c in self.cases if only in c.id]
        self.blockd = Prober(blockd_binary(), directory, "blockd")
        self.qemu = Prober("qemu-storage-daemon", directory, "qsd")
        self.pool = ThreadPoolExecutor(max_workers=1)

    def close(self) -> None:
        self.pool.shutdown()
        self.qemu.stop()
        status = self.blockd.stop()
        assert status in (None, 0), f"blockd exited with {status} at the end:\n{self.blockd.log_tail()}"


@pytest.fixture(scope="module")
def cat(tmp_path_factory, long_mode):
    require("qemu-img", "qemu-io", "qemu-storage-daemon")
    c = Catalogue(tmp_path_factory.mktemp("corrupt"), long_mode)
    yield c
    c.close()


def test_pristine_bases_read_identically(cat):
    """The undamaged images open in both daemons and read as qemu-img convert reads them."""
    for base in cat.bases.values():
        for prober in (cat.qemu, cat.blockd):
            out = prober.probe(base.path, read_limit=len(base.guest))
            assert out.refused is None and out.broken is None, f"{prober.name} {base.name}: {out}"
            data = b"".join(out.chunks[o] for o in sorted(out.chunks))
            assert data == base.guest, f"{prober.name} reads {base.name} differently from qemu-img convert"


@pytest.mark.parametrize("group", GROUPS)
def test_damaged_images(cat, group):
    cases = [c for c in cat.cases if c.group == group or (group == "flip" and c.group.startswith("flip-"))]
    if not cases:
        pytest.skip(f"SKIPPED: no case of group {group} selected (QCOW2_CASE={os.environ.get('QCOW2_CASE')})")
    failures: list[tuple[str, str, str]] = []
    for index, case in enumerate(cases):
        for cause, detail in run_case(cat, case, index):
            failures.append((cause, case.id, detail))
    assert not failures, report(group, len(cases), failures)


def run_case(cat: Catalogue, case: Case, index: int) -> list[tuple[str, str]]:
    """The problems blockd has with one case: (cause, detail) pairs."""
    base = cat.bases[case.base]
    image = cat.directory / f"case-{index}.qcow2"
    damaged = case.mutate(base.layout.data, image.name)
    image.write_bytes(damaged)
    try:
        limit = len(base.guest)
        # Both daemons read the image at the same time (each has its own core, when it is free).
        asked = None if case.qemu_loops else cat.pool.submit(cat.qemu.probe, image, read_limit=limit)
        ours = cat.blockd.probe(image, read_limit=limit)
        if asked is None:
            ref = Outcome(refused="not asked: QEMU 7.2 recurses without end on a backing chain through itself")
        else:
            ref = asked.result()
            if ref.broken:  # QEMU itself failed on it: no reference data
                ref = Outcome(refused=f"qemu-storage-daemon: {ref.broken}")
        recheck_disputed(cat, image, base.guest, ref, ours)
        problems = compare(case, base.guest, ref, ours)
        if ours.refused and not ours.broken and (case.must_refuse or index % 5 == 0):
            problems += cli_refusal(cat, image)
        if case.writable and not problems:
            image.write_bytes(damaged)
            problems += write_case(cat, image, damaged, qemu_usable=not case.qemu_loops)
        return problems
    finally:
        image.unlink(missing_ok=True)


def recheck_disputed(cat: Catalogue, image: Path, pristine: bytes, ref: Outcome, ours: Outcome) -> None:
    """QEMU stops serving an image once it finds it corrupt, so a chunk it failed after an earlier
    one may still have an answer: ask again for such chunks (where blockd read something other
    than the pristine data), each on a fresh open, and keep what QEMU reads then."""
    if ref.refused or ours.refused or ours.broken:
        return
    disputed = [offset for offset, got in sorted(ours.chunks.items())
                if isinstance(got, bytes) and isinstance(ref.chunks.get(offset), str)
                and got != pristine[offset:offset + len(got)].ljust(len(got), b"\0")]
    for offset in disputed[:8]:
        again = cat.qemu.probe(image, read_limit=0, offsets=[offset])
        if again.refused is None and again.broken is None and isinstance(again.chunks.get(offset), bytes):
            ref.chunks[offset] = again.chunks[offset]


def compare(case: Case, pristine: bytes, ref: Outcome, ours: Outcome) -> list[tuple[str, str]]:
    if ours.died:
        return [(f"blockd died ({ours.died.split(';')[0]})", ours.died)]
    if ours.hung:
        return [("blockd hung", ours.hung)]
    if ours.fatal:
        return [("blockd logged a fatal error", ours.fatal)]
    if ours.refused:
        return []
    if case.must_refuse:
        return [("opened an image the qcow2 spec says to refuse", f"qemu: {ref.refused}")]
    if ref.refused is None and ref.size != ours.size:
        return [("size differs from qemu's", f"qemu {ref.size}, blockd {ours.size}")]
    wrong, garbage = [], []
    for offset, got in sorted(ours.chunks.items()):
        if isinstance(got, str):
            continue
        want = ref.chunks.get(offset) if ref.refused is None else None
        if isinstance(want, bytes):
            if got != want:
                wrong.append(offset)
        else:
            expected = pristine[offset:offset + len(got)].ljust(len(got), b"\0")
            if got != expected:
                garbage.append(offset)
    problems = []
    if wrong:
        problems.append(("data differs from qemu's", f"chunks at {_offsets(wrong)}; qemu: {_summary(ref)}"))
    if garbage:
        why = f"qemu refused: {ref.refused}" if ref.refused else f"qemu failed those chunks: {_summary(ref)}"
        problems.append(("data where qemu fails, and not the pristine data", f"chunks at {_offsets(garbage)}; {why}"))
    return problems


def _offsets(offsets: list[int]) -> str:
    shown = ", ".join(hex(o) for o in offsets[:6])
    return shown + (f" and {len(offsets) - 6} more" if len(offsets) > 6 else "")


def _summary(out: Outcome) -> str:
    errors = [o for o, v in out.chunks.items() if isinstance(v, str)]
    return f"{len(out.chunks) - len(errors)} chunks read, {len(errors)} failed"


def cli_refusal(cat: Catalogue, image: Path) -> list[tuple[str, str]]:
    """blockd started with the image on its command line must exit non-zero with a message."""
    sock = cat.directory / "cli.sock"
    args = [blockd_binary(), "--blockdev", f"driver=file,node-name=f0,filename={image},read-only=on",
            "--blockdev", "driver=qcow2,node-name=d0,file=f0,read-only=on",
            "--export", "type=nbd,id=e0,node-name=d0,writable=off",
            "--nbd-server", f"addr.type=unix,addr.path={sock}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        text = proc.communicate(timeout=DEADLINE)[0].decode(errors="replace")
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return [("command line: accepted (or hung on) an image blockdev-add refused", "still running after 20 s")]
    finally:
        sock.unlink(missing_ok=True)
    if proc.returncode < 0:
        return [(f"command line: killed by signal {-proc.returncode}", text[-600:])]
    if proc.returncode == 0 or not text.strip():
        return [("command line: refused without exit status or message", f"exit {proc.returncode}: {text!r}")]
    if "Fatal error" in text:
        return [("command line: fatal error", text[-600:])]
    return []


def qemu_check(image: Path) -> tuple[int, int]:
    """How bad `qemu-img check` finds the image: (1, 0) when it cannot open it (or hangs), else
    (0, corruptions + check errors)."""
    try:
        proc = subprocess.run(["qemu-img", "check", "-U", "--output=json", str(image)],
                              capture_output=True, text=True, timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        return (1, 0)
    if not proc.stdout.strip():
        return (1, 0)
    report = json.loads(proc.stdout)
    return (0, report.get("corruptions", 0) + report.get("check-errors", 0))


def write_case(cat: Catalogue, image: Path, damaged: bytes, qemu_usable: bool) -> list[tuple[str, str]]:
    """Writes through blockd must not crash or hang it, nor leave the image worse than QEMU would
    (without a usable QEMU, only the first part is checked)."""
    before = qemu_check(image) if qemu_usable else None
    ours = cat.blockd.probe(image, read_limit=0, writes=WRITES)
    if ours.broken:
        cause = "blockd died" if ours.died else "blockd hung" if ours.hung else "blockd logged a fatal error"
        return [(f"writable: {cause}", ours.broken)]
    if ours.refused or before is None:
        return []
    data = image.read_bytes()
    if data[:4] == b"QFI\xfb" and int.from_bytes(data[4:8], "big") >= 3 and data[79] & 2 and not damaged[79] & 2:
        # Marking the image corrupt is the right answer to damage found while writing; judge the
        # rest of the image (with the L1 table pointing into the header, the bit would count).
        image.write_bytes(data[:79] + bytes([data[79] & ~2]) + data[80:])
    after = qemu_check(image)
    if after <= before:
        return []
    image.write_bytes(damaged)  # worse: would QEMU have made it as bad with the same writes?
    cmd = ["qemu-io", "-f", "qcow2"]
    for offset, payload in WRITES:
        cmd += ["-c", f"write -P {payload[0]} {offset} {len(payload)}"]
    try:
        subprocess.run([*cmd, "-c", "flush", str(image)], capture_output=True, timeout=DEADLINE)
        by_qemu = qemu_check(image)
    except subprocess.TimeoutExpired:
        by_qemu = before
    if after <= by_qemu:
        return []
    return [("writable: qemu-img check finds the image worse after blockd's writes",
             f"(unopenable, corruptions) before {before}, after qemu-io {by_qemu}, after blockd {after}; "
             f"replies {ours.writes}")]


def report(group: str, total: int, failures: list[tuple[str, str, str]]) -> str:
    by_cause: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for cause, case_id, detail in failures:
        by_cause[cause].append((case_id, detail))
    lines = [f"{len(failures)} problem(s) in {total} '{group}' cases:"]
    for cause, items in sorted(by_cause.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"\n== {cause}: {len(items)} case(s)")
        for case_id, detail in items[:40]:
            lines.append(f"  {case_id}: {detail.splitlines()[0][:300] if detail else ''}")
        if len(items) > 40:
            lines.append(f"  ... and {len(items) - 40} more")
        example = items[0][1]
        if "\n" in example:
            lines.append("  first one's log tail:\n    " + "\n    ".join(example.splitlines()[1:][-8:]))
    return "\n".join(lines)
