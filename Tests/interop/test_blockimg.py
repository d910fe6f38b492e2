"""blockimg against qemu-img as the reference: images it creates pass `qemu-img check` and report the
same `info`, its `map` equals qemu-img's on images qemu-io wrote, `convert` round trips compare equal,
`compare` exits like qemu-img's, and bad input fails clearly without creating anything."""
import json
import os
from pathlib import Path

import pytest

from client_helpers import run
from conftest import ROOT, require


def blockimg_binary() -> str:
    """The blockimg under test: $BLOCKIMG, else next to $BLOCKD, else the release or debug build."""
    if os.environ.get("BLOCKIMG"):
        return os.environ["BLOCKIMG"]
    if os.environ.get("BLOCKD"):
        sibling = Path(os.environ["BLOCKD"]).with_name("blockimg")
        if sibling.exists():
            return str(sibling)
    for kind in ("release", "debug"):
        candidate = ROOT / ".build" / kind / "blockimg"
        if candidate.exists():
            return str(candidate)
    pytest.fail("no blockimg binary: run 'swift build --product blockimg' or set BLOCKIMG")


def blockimg(*args, ok: bool = True, cwd=None):
    return run([blockimg_binary(), *args], ok=ok, timeout=120, cwd=cwd)


def qemu_img(*args, ok: bool = True, cwd=None):
    return run(["qemu-img", *args], ok=ok, timeout=120, cwd=cwd)


def qemu_check(image: Path) -> dict:
    proc = qemu_img("check", "--output=json", str(image), ok=False)
    assert proc.returncode == 0, f"qemu-img check exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    report = json.loads(proc.stdout)
    assert report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0, report
    assert report.get("check-errors", 0) == 0, report
    return report


SHARED = ["virtual-size", "format", "cluster-size", "backing-filename", "backing-filename-format",
          "full-backing-filename", "filename", "dirty-flag"]
SHARED_QCOW2 = ["compat", "lazy-refcounts", "refcount-bits", "compression-type", "corrupt", "extended-l2"]


def assert_info_agrees(image: Path, cwd: Path | None = None, chain: bool = False) -> None:
    extra = ["--backing-chain"] if chain else []
    ours = json.loads(blockimg("info", "--output=json", *extra, str(image), cwd=cwd).stdout)
    theirs = json.loads(qemu_img("info", "--output=json", *extra, str(image), cwd=cwd).stdout)
    pairs = zip(ours, theirs) if chain else [(ours, theirs)]
    if chain:
        assert len(ours) == len(theirs)
    for mine, reference in pairs:
        for key in SHARED:
            assert mine.get(key) == reference.get(key), (key, mine, reference)
        if reference["format"] == "qcow2":
            assert mine["format-specific"]["type"] == "qcow2"
            for key in SHARED_QCOW2:
                assert mine["format-specific"]["data"].get(key) == reference["format-specific"]["data"].get(key), key


CREATE_OPTIONS = [
    "",
    "compat=0.10",
    "compat=0.10,cluster_size=4096",
    "compat=1.1,cluster_size=512",
    "cluster_size=2M",
    "refcount_bits=1,cluster_size=4096",
    "refcount_bits=2",
    "refcount_bits=4,lazy_refcounts=on",
    "refcount_bits=8",
    "refcount_bits=32",
    "refcount_bits=64,cluster_size=8192",
    "lazy_refcounts=on",
    "compression_type=zlib",
    "preallocation=metadata",
    "preallocation=metadata,cluster_size=512,refcount_bits=1",
    "preallocation=falloc,cluster_size=16384",
    "preallocation=full,refcount_bits=64",
    "compat=0.10,preallocation=metadata",
]


@pytest.mark.parametrize("options", CREATE_OPTIONS)
@pytest.mark.parametrize("size", ["0", "1M", "100M", "10000000"])
def test_create_qcow2_passes_check_and_info_agrees(tmp_path, options, size):
    require("qemu-img")
    if size == "100M" and "preallocation=full" in options:
        size = "20M"
    image = tmp_path / "new.qcow2"
    args = ["create", "-q", "-f", "qcow2"] + (["-o", options] if options else []) + [str(image), size]
    blockimg(*args)
    qemu_check(image)
    assert_info_agrees(image)


def test_create_human_output_matches_qemu_img(tmp_path):
    require("qemu-img")
    image = tmp_path / "h.qcow2"
    blockimg("create", "-f", "qcow2", "-o", "lazy_refcounts=on", str(image), "3G")
    assert blockimg("info", str(image)).stdout == qemu_img("info", str(image)).stdout
    raw = tmp_path / "h.raw"
    out = blockimg("create", "-f", "raw", str(raw), "1536k").stdout
    assert out.strip() == f"Formatting '{raw}', fmt=raw size=1572864"
    assert raw.stat().st_size == 1572864
    assert blockimg("info", str(raw)).stdout == qemu_img("info", str(raw)).stdout


@pytest.mark.parametrize("mode", ["off", "falloc", "full"])
def test_create_raw(tmp_path, mode):
    require("qemu-img")
    raw = tmp_path / "r.raw"
    blockimg("create", "-q", "-f", "raw", "-o", f"preallocation={mode}", str(raw), "4M")
    assert raw.stat().st_size == 4 << 20
    if mode != "off":
        assert raw.stat().st_blocks * 512 >= 4 << 20
    assert_info_agrees(raw)


def test_backing_file_and_backing_chain(tmp_path):
    require("qemu-img", "qemu-io")
    base = tmp_path / "base.qcow2"
    blockimg("create", "-q", "-f", "qcow2", str(base), "8M")
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x41 0 1M", str(base)])
    top = tmp_path / "top.qcow2"
    # Like qemu-img: the size comes from the backing file, and the name is kept relative.
    blockimg("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(top))
    qemu_check(top)
    assert_info_agrees(top, chain=True)
    assert blockimg("info", "--backing-chain", str(top)).stdout == qemu_img("info", "--backing-chain", str(top)).stdout
    assert qemu_img("compare", str(base), str(top)).returncode == 0
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x42 512k 64k", str(top)])
    ours = json.loads(blockimg("map", "--output=json", str(top)).stdout)
    theirs = json.loads(qemu_img("map", "--output=json", str(top)).stdout)
    assert ours == theirs


def test_backing_without_format_is_refused(tmp_path):
    base = tmp_path / "base.qcow2"
    blockimg("create", "-q", "-f", "qcow2", str(base), "1M")
    top = tmp_path / "top.qcow2"
    proc = blockimg("create", "-f", "qcow2", "-b", str(base), str(top), ok=False)
    assert proc.returncode == 1 and "backing format" in proc.stderr
    assert not top.exists()


MAP_WRITES = [
    ["write -P 1 0 64k"],
    ["write -P 2 100k 3k", "write -z 1M 64k", "write -P 3 5M 1M", "write -z -u 2M 128k"],
    ["write -P 4 0 8M", "discard 1M 1M", "write -z 3M 100k"],
]


@pytest.mark.parametrize("options", ["", "cluster_size=4096", "compat=0.10", "cluster_size=512,refcount_bits=1"])
@pytest.mark.parametrize("writes", range(len(MAP_WRITES)))
def test_map_equals_qemu_img(tmp_path, options, writes):
    require("qemu-img", "qemu-io")
    image = tmp_path / "m.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", *(["-o", options] if options else []), str(image), "8M")
    commands = []
    for command in MAP_WRITES[writes]:
        commands += ["-c", command]
    run(["qemu-io", "-f", "qcow2", *commands, str(image)])
    for output in ("json", "human"):
        ours = blockimg("map", f"--output={output}", str(image)).stdout
        theirs = qemu_img("map", f"--output={output}", str(image)).stdout
        if output == "json":
            assert json.loads(ours) == json.loads(theirs)
        else:
            assert ours == theirs


def test_map_raw_equals_qemu_img(tmp_path):
    require("qemu-img")
    raw = tmp_path / "r.raw"
    with open(raw, "wb") as f:
        f.truncate(16 << 20)
        f.seek(3 << 20)
        f.write(os.urandom(1 << 20))
    ours = json.loads(blockimg("map", "--output=json", str(raw)).stdout)
    assert ours == json.loads(qemu_img("map", "--output=json", str(raw)).stdout)


def random_raw(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in (0, size // 5, size // 2, size - 70000):
            f.seek(offset)
            f.write(os.urandom(70000))
        f.seek(size // 3)
        f.write(b"\0" * 65536)
    return path


@pytest.mark.parametrize("flags", [[], ["-p"], ["-W", "-m", "4"], ["-S", "0"]])
@pytest.mark.parametrize("options", ["", "cluster_size=4096", "compat=0.10,refcount_bits=16", "refcount_bits=1,cluster_size=512"])
def test_convert_round_trip(tmp_path, flags, options):
    require("qemu-img")
    raw = random_raw(tmp_path / "src.raw", 12 << 20)
    qcow2 = tmp_path / "mid.qcow2"
    back = tmp_path / "back.raw"
    blockimg("convert", *flags, "-f", "raw", "-O", "qcow2", *(["-o", options] if options else []), str(raw), str(qcow2))
    qemu_check(qcow2)
    assert qemu_img("compare", "-f", "raw", "-F", "qcow2", str(raw), str(qcow2)).returncode == 0
    blockimg("convert", *flags, "-O", "raw", str(qcow2), str(back))
    assert qemu_img("compare", "-f", "raw", "-F", "raw", str(raw), str(back)).returncode == 0
    assert back.read_bytes() == raw.read_bytes()
    if "-S" not in flags:
        # Sparse output: the holes of the source are holes in the copy.
        assert back.stat().st_blocks * 512 < 2 << 20


def test_convert_progress_prints_percentages(tmp_path):
    raw = random_raw(tmp_path / "src.raw", 8 << 20)
    out = blockimg("convert", "-p", "-O", "qcow2", str(raw), str(tmp_path / "o.qcow2")).stdout
    assert "(100.00/100%)" in out and "(0.00/100%)" in out


def test_convert_qemu_written_qcow2_with_backing(tmp_path):
    require("qemu-img", "qemu-io")
    base = random_raw(tmp_path / "base.raw", 4 << 20)
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", base.name, "-F", "raw", str(top))
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x55 1M 200k", "-c", "write -z 3M 64k", str(top)])
    out = tmp_path / "flat.qcow2"
    blockimg("convert", "-O", "qcow2", str(top), str(out))
    qemu_check(out)
    assert qemu_img("compare", str(top), str(out)).returncode == 0
    assert json.loads(qemu_img("info", "--output=json", str(out)).stdout).get("backing-filename") is None


def test_convert_existing_target_with_n(tmp_path):
    require("qemu-img")
    raw = random_raw(tmp_path / "src.raw", 4 << 20)
    target = tmp_path / "t.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(target), "4M")
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x77 0 4M", str(target)])
    blockimg("convert", "-n", "-O", "qcow2", str(raw), str(target))
    qemu_check(target)
    assert qemu_img("compare", "-f", "raw", str(raw), str(target)).returncode == 0


def test_compare_exit_codes(tmp_path):
    require("qemu-img")
    a = random_raw(tmp_path / "a.raw", 2 << 20)
    b = tmp_path / "b.qcow2"
    blockimg("convert", "-O", "qcow2", str(a), str(b))
    same = blockimg("compare", str(a), str(b), ok=False)
    assert same.returncode == 0 and same.stdout.strip() == "Images are identical."
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x99 1000000 10", str(b)])
    differ = blockimg("compare", str(a), str(b), ok=False)
    reference = qemu_img("compare", str(a), str(b), ok=False)
    assert differ.returncode == reference.returncode == 1
    assert differ.stdout == reference.stdout
    missing = blockimg("compare", str(a), str(tmp_path / "nope.raw"), ok=False)
    assert missing.returncode == 2 and "nope.raw" in missing.stderr
    longer = tmp_path / "longer.raw"
    longer.write_bytes(a.read_bytes() + b"\0" * 4096)
    assert blockimg("compare", str(a), str(longer), ok=False).returncode == 0
    strict = blockimg("compare", "-s", str(a), str(longer), ok=False)
    assert strict.returncode == 1 and "size mismatch" in strict.stdout


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_resize(tmp_path, fmt):
    require("qemu-img")
    image = tmp_path / f"r.{fmt}"
    blockimg("create", "-q", "-f", fmt, str(image), "4M")
    assert blockimg("resize", str(image), "+6M").stdout.strip() == "Image resized."
    info = json.loads(qemu_img("info", "--output=json", str(image)).stdout)
    assert info["virtual-size"] == 10 << 20
    if fmt == "qcow2":
        qemu_check(image)
    refused = blockimg("resize", str(image), "2M", ok=False)
    assert refused.returncode == 1 and "--shrink" in refused.stderr
    blockimg("resize", "--shrink", str(image), "2M")
    assert json.loads(qemu_img("info", "--output=json", str(image)).stdout)["virtual-size"] == 2 << 20


@pytest.mark.parametrize("args", [
    ["--size", "10G", "-O", "qcow2"],
    ["--size", "1T", "-O", "qcow2", "-o", "cluster_size=4096,refcount_bits=1"],
    ["--size", "1G", "-O", "qcow2", "-o", "preallocation=full"],
    ["--size", "1000", "-O", "raw"],
])
def test_measure_matches_qemu_img(args):
    require("qemu-img")
    assert blockimg("measure", *args).stdout == qemu_img("measure", *args).stdout


def test_measure_of_an_image_matches_qemu_img(tmp_path):
    require("qemu-img", "qemu-io")
    image = tmp_path / "m.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "64M")
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 1 0 3M", "-c", "write -P 2 40M 100k", str(image)])
    for fmt in ("qcow2", "raw"):
        ours = json.loads(blockimg("measure", "--output=json", "-O", fmt, str(image)).stdout)
        assert ours == json.loads(qemu_img("measure", "--output=json", "-O", fmt, str(image)).stdout)


@pytest.mark.parametrize("args, words", [
    (["create", "-f", "qcow2", "-o", "bogus=1", "{x}", "1M"], "bogus"),
    (["create", "-f", "qcow2", "-o", "cluster_size=3000", "{x}", "1M"], "Cluster size"),
    (["create", "-f", "qcow2", "-o", "refcount_bits=3", "{x}", "1M"], "Refcount width"),
    (["create", "-f", "qcow2", "-o", "compat=0.10,lazy_refcounts=on", "{x}", "1M"], "Lazy refcounts"),
    (["create", "-f", "qcow2", "-o", "compat=0.10,refcount_bits=8", "{x}", "1M"], "refcount widths"),
    (["create", "-f", "qcow2", "-o", "compression_type=zstd", "{x}", "1M"], "zstd"),
    (["create", "-f", "qcow2", "{x}", "12Q"], "Invalid image size"),
    (["create", "-f", "qcow2", "{x}"], "size"),
    (["create", "-f", "luks", "{x}", "1M"], "Unknown file format"),
    (["create", "-f", "raw", "-o", "preallocation=metadata", "{x}", "1M"], "preallocation"),
    (["create", "-f", "qcow2", "-b", "{missing}", "-F", "qcow2", "{x}"], "missing"),
    (["convert", "-O", "qcow2", "{missing}", "{x}"], "missing"),
    (["convert", "-O", "qcow2", "-o", "nope=1", "{existing}", "{x}"], "nope"),
    (["convert", "-c", "-O", "raw", "{existing}", "{x}"], "Compression not supported"),
])
def test_bad_input_fails_clearly_and_creates_nothing(tmp_path, args, words):
    existing = tmp_path / "existing.raw"
    existing.write_bytes(b"\1" * 65536)
    target = tmp_path / "x.img"
    mapping = {"{x}": str(target), "{missing}": str(tmp_path / "missing.qcow2"), "{existing}": str(existing)}
    proc = blockimg(*[mapping.get(a, a) for a in args], ok=False)
    assert proc.returncode != 0
    assert words in proc.stderr, proc.stderr
    assert proc.stderr.startswith("blockimg: ")
    assert not target.exists()


def test_info_of_missing_file_fails(tmp_path):
    proc = blockimg("info", str(tmp_path / "none.qcow2"), ok=False)
    assert proc.returncode == 1 and "No such file" in proc.stderr


def test_blockd_writes_to_a_blockimg_image_pass_check(start_blockd, tmp_path):
    require("qemu-img", "qemu-io")
    image = tmp_path / "d.qcow2"
    blockimg("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096,refcount_bits=4", str(image), "16M")
    reference = random_raw(tmp_path / "ref.raw", 16 << 20)
    daemon = start_blockd(args=[
        "--blockdev", f"driver=file,node-name=f0,filename={image}",
        "--blockdev", "driver=qcow2,node-name=disk0,file=f0",
        "--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on"])
    qemu_img("convert", "-n", "-f", "raw", "-O", "raw", str(reference), daemon.uri())
    assert daemon.stop() == 0
    daemon.check_exit = False
    qemu_check(image)
    assert qemu_img("compare", "-f", "raw", "-F", "qcow2", str(reference), str(image)).returncode == 0
    assert blockimg("compare", "-f", "raw", "-F", "qcow2", str(reference), str(image)).returncode == 0


def chain_with_data(tmp_path: Path) -> tuple[Path, Path, Path]:
    """base.raw (random) under top.qcow2 (qemu-io wrote data and zeroes); and the flattened contents."""
    require("qemu-img", "qemu-io")
    base = random_raw(tmp_path / "base.raw", 4 << 20)
    top = tmp_path / "top.qcow2"
    blockimg("create", "-q", "-f", "qcow2", "-b", base.name, "-F", "raw", str(top))
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x22 1M 100k", "-c", "write -z 3M 64k", str(top)])
    flat = tmp_path / "flat.raw"
    qemu_img("convert", "-O", "raw", str(top), str(flat))
    return base, top, flat


@pytest.mark.parametrize("keep", [True, False])
def test_commit(tmp_path, keep):
    base, top, flat = chain_with_data(tmp_path)
    out = blockimg("commit", *(["-d"] if keep else []), str(top)).stdout
    assert out.strip() == "Image committed."
    assert base.read_bytes() == flat.read_bytes()
    qemu_check(top)
    assert qemu_img("compare", str(top), str(flat)).returncode == 0
    allocated = [e for e in json.loads(qemu_img("map", "--output=json", str(top)).stdout) if e["depth"] == 0 and e["present"]]
    assert bool(allocated) == keep
    assert_info_agrees(top)


def test_commit_without_backing_fails(tmp_path):
    image = tmp_path / "alone.qcow2"
    blockimg("create", "-q", "-f", "qcow2", str(image), "1M")
    proc = blockimg("commit", str(image), ok=False)
    assert proc.returncode == 1 and "does not have a backing file" in proc.stderr


def test_rebase_safe_keeps_contents(tmp_path):
    _, top, flat = chain_with_data(tmp_path)
    other = random_raw(tmp_path / "other.raw", 3 << 20)
    blockimg("rebase", "-b", other.name, "-F", "raw", str(top))
    qemu_check(top)
    info = json.loads(qemu_img("info", "--output=json", str(top)).stdout)
    assert info["backing-filename"] == other.name and info["backing-filename-format"] == "raw"
    assert qemu_img("compare", str(top), str(flat)).returncode == 0
    blockimg("rebase", "-b", "", str(top))
    qemu_check(top)
    assert "backing-filename" not in json.loads(qemu_img("info", "--output=json", str(top)).stdout)
    assert qemu_img("compare", str(top), str(flat)).returncode == 0


def test_rebase_unsafe_only_rewrites_the_header(tmp_path):
    _, top, _ = chain_with_data(tmp_path)
    other = random_raw(tmp_path / "other.raw", 4 << 20)
    before = json.loads(qemu_img("map", "--output=json", "--max-length", "4M", str(top)).stdout)
    blockimg("rebase", "-u", "-b", other.name, "-F", "raw", str(top))
    qemu_check(top)
    assert_info_agrees(top, chain=True)
    after = json.loads(qemu_img("map", "--output=json", str(top)).stdout)
    assert [e for e in after if e["depth"] == 0] == [e for e in before if e["depth"] == 0]
    expected = bytearray(other.read_bytes())
    expected[1 << 20:(1 << 20) + 102400] = b"\x22" * 102400
    expected[3 << 20:(3 << 20) + 65536] = b"\0" * 65536
    flat = tmp_path / "after.raw"
    qemu_img("convert", "-O", "raw", str(top), str(flat))
    assert flat.read_bytes() == bytes(expected)


def leaky_image(tmp_path: Path, refcount_of_cluster0: int | None = None) -> Path:
    """A 64 KiB-cluster image with cluster 4 counted but unused (a leak); optionally a wrong refcount for cluster 0."""
    image = tmp_path / "leaky.qcow2"
    blockimg("create", "-q", "-f", "qcow2", str(image), "1M")
    with open(image, "r+b") as f:
        f.seek(0x20000 + 8)
        f.write(b"\x00\x01")
        if refcount_of_cluster0 is not None:
            f.seek(0x20000)
            f.write(refcount_of_cluster0.to_bytes(2, "big"))
        f.truncate(5 * 65536)
    return image


def normalised(text: str) -> dict:
    return json.loads(text)


def test_check_clean_image_agrees_with_qemu_img(tmp_path):
    require("qemu-img", "qemu-io")
    image = tmp_path / "c.qcow2"
    blockimg("create", "-q", "-f", "qcow2", str(image), "10M")
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 1 0 1M", str(image)])
    ours = blockimg("check", str(image))
    assert ours.stdout == qemu_img("check", str(image)).stdout
    ours_json = normalised(blockimg("check", "--output=json", str(image)).stdout)
    assert ours_json == normalised(qemu_img("check", "--output=json", str(image)).stdout)


def test_check_finds_and_repairs_leaks(tmp_path):
    require("qemu-img")
    image = leaky_image(tmp_path)
    ours = blockimg("check", str(image), ok=False)
    reference = qemu_img("check", str(image), ok=False)
    assert ours.returncode == reference.returncode == 3
    assert ours.stdout == reference.stdout
    assert normalised(blockimg("check", "--output=json", str(image), ok=False).stdout) == normalised(
        qemu_img("check", "--output=json", str(image), ok=False).stdout)
    repaired = blockimg("check", "-r", "leaks", str(image))
    assert "1 leaked clusters" in repaired.stdout and "No errors were found" in repaired.stdout
    qemu_check(image)


def test_check_finds_and_repairs_corruption(tmp_path):
    require("qemu-img")
    image = leaky_image(tmp_path, refcount_of_cluster0=0)
    ours = blockimg("check", str(image), ok=False)
    assert ours.returncode == qemu_img("check", str(image), ok=False).returncode == 2
    assert "errors were found on the image" in ours.stdout
    assert blockimg("check", "-r", "leaks", str(image), ok=False).returncode == 2
    fixed = blockimg("check", "-r", "all", "--output=json", str(image))
    report = json.loads(fixed.stdout)
    assert report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0
    assert report["corruptions-fixed"] >= 1
    qemu_check(image)


def test_check_raw_and_bad_repair_mode(tmp_path):
    raw = tmp_path / "r.raw"
    raw.write_bytes(b"\0" * 4096)
    proc = blockimg("check", str(raw), ok=False)
    assert proc.returncode == 63 and "does not support checks" in proc.stderr
    image = leaky_image(tmp_path)
    before = image.read_bytes()
    proc = blockimg("check", "-r", "everything", str(image), ok=False)
    assert proc.returncode == 1 and "leaks" in proc.stderr
    assert image.read_bytes() == before


def test_snapshots_agree_with_qemu_img(tmp_path):
    require("qemu-img", "qemu-io")
    image = tmp_path / "s.qcow2"
    blockimg("create", "-q", "-f", "qcow2", str(image), "8M")
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 1 0 1M", str(image)])
    assert blockimg("snapshot", "-l", str(image)).stdout == ""
    blockimg("snapshot", "-c", "first", str(image))
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 2 0 1M", str(image)])
    blockimg("snapshot", "-c", "second", str(image))
    qemu_check(image)
    assert blockimg("snapshot", "-l", str(image)).stdout == qemu_img("snapshot", "-l", str(image)).stdout
    assert blockimg("info", str(image)).stdout == qemu_img("info", str(image)).stdout
    ours = json.loads(blockimg("info", "--output=json", str(image)).stdout)
    assert ours["snapshots"] == json.loads(qemu_img("info", "--output=json", str(image)).stdout)["snapshots"]
    blockimg("snapshot", "-a", "first", str(image))
    run(["qemu-io", "-f", "qcow2", "-c", "read -P 1 0 1M", str(image)])
    blockimg("snapshot", "-d", "second", str(image))
    qemu_check(image)
    assert [s["name"] for s in json.loads(qemu_img("info", "--output=json", str(image)).stdout)["snapshots"]] == ["first"]
    missing = blockimg("snapshot", "-a", "nope", str(image), ok=False)
    assert missing.returncode == 1 and "nope" in missing.stderr
    # qemu-img reads what blockimg's snapshots hold.
    qemu_img("snapshot", "-a", "first", str(image))
    qemu_check(image)


@pytest.mark.parametrize("flags", [[], ["-W"]])
@pytest.mark.parametrize("cluster", ["4096", "65536"])
def test_convert_compressed(tmp_path, flags, cluster):
    require("qemu-img")
    raw = tmp_path / "src.raw"
    raw.write_bytes(os.urandom(1 << 20) + b"\0" * (1 << 20) + (b"blockimg compresses " * 60000)[: (2 << 20) + 1000])
    image = tmp_path / "c.qcow2"
    blockimg("convert", "-c", *flags, "-O", "qcow2", "-o", f"cluster_size={cluster}", str(raw), str(image))
    report = qemu_check(image)
    assert report.get("compressed-clusters", 0) > 0
    assert qemu_img("compare", "-f", "raw", str(raw), str(image)).returncode == 0
    assert image.stat().st_size < raw.stat().st_size - (3 << 19)  # the repeated text shrinks to almost nothing
    refused = blockimg("convert", "-c", "-O", "raw", str(raw), str(tmp_path / "x.raw"), ok=False)
    assert refused.returncode == 1 and not (tmp_path / "x.raw").exists()
