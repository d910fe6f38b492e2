"""The I/O paths of the file driver — synchronous (aio=threads), io_uring (aio=native), O_DIRECT with
bouncing — each checked byte for byte with real clients."""
import subprocess

import pytest

from conftest import make_image, require, skip_or_fail

MODES = ["", ",aio=native", ",cache.direct=on", ",aio=native,cache.direct=on", ",aio=io_uring,discard=unmap"]


@pytest.mark.parametrize("file_opts", MODES)
def test_copy_in_and_out_and_fio_verify(start_blockd, tmp_path, file_opts):
    require("nbdcopy", "fio", "qemu-io")
    src = make_image(tmp_path / "src.img", 32 << 20, b"random")
    disk = make_image(tmp_path / "disk.img", 32 << 20)
    try:
        daemon = start_blockd(disk, file_opts=file_opts)
    except RuntimeError as error:
        if "O_DIRECT" in str(error) or "Invalid argument" in str(error):
            skip_or_fail(f"this file system does not allow O_DIRECT: {error}")
        raise
    subprocess.run(["nbdcopy", "--connections=4", str(src), daemon.uri()], check=True)
    assert disk.read_bytes() == src.read_bytes()
    out = tmp_path / "out.img"
    subprocess.run(["nbdcopy", daemon.uri(), str(out)], check=True)
    assert out.read_bytes() == src.read_bytes()
    # Unaligned and FUA writes go through the same path (bounced under O_DIRECT).
    run = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 1001 3333", "-c", "aio_write -f -P 0x6b 65536 4096",
                          "-c", "aio_flush", "-c", "read -P 0x5a 1001 3333", "-c", "read -P 0x6b 65536 4096", daemon.uri()],
                         capture_output=True, text=True, check=True)
    assert "fail" not in run.stdout.lower(), run.stdout
    data = disk.read_bytes()
    assert data[1001:4334] == b"\x5a" * 3333 and data[1000:1001] == src.read_bytes()[1000:1001]
    assert data[65536:69632] == b"\x6b" * 4096
    fio = subprocess.run(["fio", "--name=verify", "--ioengine=nbd", f"--uri={daemon.uri()}", "--rw=randwrite", "--bs=4k",
                          "--iodepth=32", "--size=8M", "--verify=crc32c", "--do_verify=1", "--verify_state_save=0",
                          "--output-format=json"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert fio.returncode == 0, fio.stdout + fio.stderr
    assert "verify:" not in fio.stderr
