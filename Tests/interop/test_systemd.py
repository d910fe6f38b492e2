"""blockd under systemd: the unit files, socket activation (LISTEN_FDS, with systemd-socket-activate
as the service manager) and sd_notify (READY, STATUS, WATCHDOG, RELOADING, STOPPING) against a
notification socket of the test's own. Reload and logging: test_systemd_reload.py; blockd-attach:
test_systemd_attach.py."""
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import nbd
import pytest

from conftest import ROOT, blockd_binary, free_port, make_image, require
from client_helpers import MiB, read_file
from nbdwire import Conn, REP_ACK
from systemd_helpers import (NotifySocket, Process, clean_env, export_lines, nbd_exports,
                             start_blockd_config, write_config)

SERVICE = ROOT / "systemd" / "blockd@.service"
SOCKET = ROOT / "systemd" / "blockd@.socket"


@pytest.fixture
def procs():
    """Processes a test starts; whatever is still running at the end is stopped (by PID)."""
    started: list[Process] = []
    yield started
    for p in started:
        p.stop()


# --- the unit files -----------------------------------------------------------------------------

def _verify(directory, *units):
    return subprocess.run(["systemd-analyze", "verify", *[str(directory / u) for u in units]],
                          capture_output=True, text=True, timeout=60, env=clean_env(SYSTEMD_LOG_COLOR="0"))


def _instance_units(directory, service_text=None):
    directory.mkdir()
    text = service_text if service_text is not None else SERVICE.read_text()
    assert "/usr/local/bin/blockd" in text
    (directory / "blockd@t.service").write_text(text.replace("/usr/local/bin/blockd", blockd_binary()))
    shutil.copy(SOCKET, directory / "blockd@t.socket")


def test_systemd_analyze_verify_accepts_the_units(tmp_path):
    require("systemd-analyze")
    units = tmp_path / "units"
    _instance_units(units)
    proc = _verify(units, "blockd@t.service", "blockd@t.socket")
    about_us = [line for line in proc.stderr.splitlines() if "blockd" in line or str(units) in line]
    assert proc.returncode == 0 and not about_us, (
        f"systemd-analyze verify exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")

    # The check is real: a misspelt key and a missing ExecStart binary are both reported.
    broken = tmp_path / "broken"
    _instance_units(broken, SERVICE.read_text().replace("[Service]\n", "[Service]\nWatchdogSecs=5s\n"))
    proc = _verify(broken, "blockd@t.service", "blockd@t.socket")
    assert "WatchdogSecs" in proc.stderr, proc.stderr
    missing = tmp_path / "missing"
    _instance_units(missing)
    (missing / "blockd@t.service").write_text(SERVICE.read_text().replace("/usr/local/bin/blockd", str(tmp_path / "nope")))
    proc = _verify(missing, "blockd@t.service")
    assert proc.returncode != 0 and "nope" in proc.stderr, proc.stderr


def _unit_settings(path):
    settings: dict[str, list[str]] = {}
    # A line ending in a backslash continues on the next one, as systemd reads it.
    text = path.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_units_fit_what_blockd_does():
    """What the units promise is what blockd implements: notify readiness from the main process, a
    reload by SIGHUP to it, a watchdog, a socket whose name a config can pick with addr.str=."""
    service, sock = _unit_settings(SERVICE), _unit_settings(SOCKET)
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] in (["main"], ["all"])
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert " ".join(service["ExecStart"][0].split()) == (
        "/usr/local/bin/blockd --config /etc/blockd/%i.conf"
        " --chardev socket,id=qmp,path=/run/blockd/%i.qmp.sock,server=on,wait=off --monitor chardev=qmp")
    assert service["WatchdogSec"] and service["RuntimeDirectory"] == ["blockd"]
    assert sock["ListenStream"] == ["/run/blockd/%i.sock"]
    assert sock["FileDescriptorName"] == ["nbd"] and sock["Service"] == ["blockd@%i.service"]
    assert "addr.str=nbd" in SOCKET.read_text()


def test_the_units_command_line_serves_qmp(tmp_path):
    """blockd started with exactly the unit's ExecStart (instance 't', /run/blockd moved to a temp
    directory) answers on the instance's QMP socket."""
    import json
    import shlex
    import socket as socketlib
    command = " ".join(_unit_settings(SERVICE)["ExecStart"][0].split())
    command = command.replace("%i", "t").replace("/run/blockd", str(tmp_path)).replace("/etc/blockd", str(tmp_path))
    argv = shlex.split(command)
    argv[0] = blockd_binary()
    (tmp_path / "t.conf").write_text("blockdev driver=null-co,node-name=n0,size=1M\n"
                                     f"nbd-server addr.type=unix,addr.path={tmp_path}/t.sock\n"
                                     "export type=nbd,id=e0,node-name=n0\n")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=clean_env())
    try:
        qmp = tmp_path / "t.qmp.sock"
        for _ in range(250):
            if qmp.exists():
                break
            time.sleep(0.02)
        with socketlib.socket(socketlib.AF_UNIX) as conn:
            conn.connect(str(qmp))
            stream = conn.makefile("rw")
            assert "QMP" in json.loads(stream.readline())
            for command_name in ("qmp_capabilities", "query-block-exports"):
                stream.write(json.dumps({"execute": command_name}) + "\n")
                stream.flush()
                reply = json.loads(stream.readline())
            assert reply["return"][0]["id"] == "e0"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


# --- socket activation --------------------------------------------------------------------------

def _activate(tmp_path, procs, config_lines, fdnames="nbd:nbdtcp", extra_env=None):
    """systemd-socket-activate listening on a unix socket and 127.0.0.1:PORT; it execs blockd (same
    PID, LISTEN_PID matches) on the first connection attempt."""
    require("systemd-socket-activate")
    sock, port = tmp_path / "activate.sock", free_port()
    config = write_config(tmp_path / "activate.conf", config_lines)
    cmd = ["systemd-socket-activate", "-l", sock, "-l", f"127.0.0.1:{port}", f"--fdname={fdnames}"]
    for key, value in (extra_env or {}).items():
        cmd += ["-E", f"{key}={value}"]
    p = Process(tmp_path, [*cmd, blockd_binary(), "--config", config], clean_env())
    procs.append(p)
    p.wait_log(f"Listening on 127.0.0.1:{port}")
    p.wait_log(f"Listening on {sock}")
    return p, sock, port


def _pwrite(uri, data, offset):
    h = nbd.NBD()
    h.connect_uri(uri)
    h.pwrite(data, offset)
    h.flush()
    h.shutdown()


def _pread(uri, length, offset):
    h = nbd.NBD()
    h.connect_uri(uri)
    data = h.pread(length, offset)
    h.shutdown()
    return data


@pytest.mark.parametrize("first", ["unix", "tcp"])
def test_socket_activation_serves_unix_and_tcp(tmp_path, procs, first):
    image = make_image(tmp_path / "disk.img", 4 * MiB, b"random")
    original = read_file(image)
    p, sock, port = _activate(tmp_path, procs, export_lines("disk0", image))
    assert "Execing" not in p.log_text(), "blockd started before any client came"
    uris = {"unix": f"nbd+unix:///disk0?socket={sock}", "tcp": f"nbd://127.0.0.1:{port}/disk0"}
    second = "tcp" if first == "unix" else "unix"

    # The first client's connection is what starts blockd; it is served, not dropped.
    one, two = os.urandom(64 * 1024), os.urandom(64 * 1024)
    _pwrite(uris[first], one, MiB)
    log = p.wait_log("ready:")
    assert "Execing" in log, log
    assert _pread(uris[second], len(one), MiB) == one
    _pwrite(uris[second], two, 3 * MiB)
    assert _pread(uris[first], len(two), 3 * MiB) == two
    assert p.stop() == 0, p.log_text()

    expected = bytearray(original)
    expected[MiB:MiB + len(one)] = one
    expected[3 * MiB:3 * MiB + len(two)] = two
    assert read_file(image) == bytes(expected)
    log = p.log_text()
    assert "fd:3" in log and "fd:4" in log, log
    assert re.search(r"127\.0\.0\.1:\d+: connected to export 'disk0'", log), log


def test_socket_activation_picks_a_socket_by_name(tmp_path, procs):
    """nbd-server addr.type=fd,addr.str=NAME serves the passed socket of that FileDescriptorName only."""
    p, sock, port = _activate(tmp_path, procs, export_lines("disk0", None) + [
        "nbd-server addr.type=fd,addr.str=nbdtcp"])
    assert _pread(f"nbd://127.0.0.1:{port}/disk0", 4096, 0) == bytes(4096)
    log = p.wait_log("ready:")
    assert "fd:4" in log and "fd:3" not in log, log
    assert p.stop() == 0, p.log_text()


def test_socket_activation_unknown_name_is_an_error(tmp_path, procs):
    p, sock, port = _activate(tmp_path, procs, export_lines("disk0", None) + [
        "nbd-server addr.type=fd,addr.str=nbd-typo"])
    with socket.socket(socket.AF_UNIX) as s:   # the connection attempt that execs blockd
        s.connect(str(sock))
        assert p.wait_exit() == 1, p.log_text()
    log = p.log_text()
    assert "nbd-typo" in log and "nbd, nbdtcp" in log, log
    assert "ready" not in log, log


def test_socket_activation_reload_keeps_passed_sockets(tmp_path, procs):
    """systemctl reload of a socket-activated instance: a new export is served on the passed sockets."""
    p, sock, port = _activate(tmp_path, procs, export_lines("disk0", None))
    unix = f"nbd+unix://?socket={sock}"
    assert nbd_exports(unix) == ["disk0"]
    p.wait_log("ready:")
    write_config(tmp_path / "activate.conf", export_lines("disk0", None) + export_lines("disk1", None))
    p.send(signal.SIGHUP)
    p.wait_log("reloaded")
    assert nbd_exports(unix) == ["disk0", "disk1"]
    assert nbd_exports(f"nbd://127.0.0.1:{port}") == ["disk0", "disk1"]
    assert p.stop() == 0, p.log_text()


def test_stopping_leaves_the_service_managers_sockets_listening(tmp_path, procs):
    """systemd keeps the listening sockets of blockd@X.socket open while the service stops and starts
    again (systemctl stop/restart, Restart=on-failure): the next client must start the service anew.
    So blockd may close its copies of the passed descriptors but must not shut the sockets down.
    Here the test plays systemd: it holds the listening sockets and passes duplicates as fds 3 and 4."""
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(tmp_path / "held.sock"))
    unix.listen(16)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(16)
    port = tcp.getsockname()[1]
    # Duplicates above the descriptors the child must end up with, then moved to 3 and 4 by bash.
    u = fcntl.fcntl(unix.fileno(), fcntl.F_DUPFD_CLOEXEC, 20)
    t = fcntl.fcntl(tcp.fileno(), fcntl.F_DUPFD_CLOEXEC, 20)
    config = write_config(tmp_path / "held.conf", export_lines("disk0", None))
    script = (f'exec 3<&{u} 4<&{t} {u}<&- {t}<&-; '
              'export LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=nbd:nbdtcp; exec "$@"')
    p = Process(tmp_path, ["bash", "-c", script, "bash", blockd_binary(), "--config", config], clean_env(),
                pass_fds=(u, t))
    procs.append(p)
    os.close(u)
    os.close(t)
    try:
        p.wait_log("ready:")
        assert _pread(f"nbd+unix:///disk0?socket={tmp_path / 'held.sock'}", 512, 0) == bytes(512)
        assert _pread(f"nbd://127.0.0.1:{port}/disk0", 512, 0) == bytes(512)
        assert p.stop() == 0, p.log_text()
        refused = []
        for family, address in ((socket.AF_UNIX, str(tmp_path / "held.sock")), (socket.AF_INET, ("127.0.0.1", port))):
            with socket.socket(family, socket.SOCK_STREAM) as c:
                c.settimeout(2)
                try:
                    c.connect(address)
                except OSError as error:
                    refused.append(f"{address}: {error}")
        assert not refused, ("after blockd stopped, the service manager's listening sockets refuse "
                             f"connections (blockd shut them down instead of closing its copies): {refused}")
    finally:
        unix.close()
        tcp.close()


def test_listen_fds_for_another_process_are_ignored(tmp_path, procs):
    """LISTEN_PID names another process (the variables leaked from a parent): blockd must not take fds 3.. ."""
    config = write_config(tmp_path / "c.conf", export_lines("disk0", None) + [
        f"nbd-server addr.type=unix,addr.path={tmp_path / 'own.sock'}"])
    env = clean_env(LISTEN_PID="1", LISTEN_FDS="2", LISTEN_FDNAMES="nbd:nbdtcp")
    p = start_blockd_config(tmp_path, config, env)
    procs.append(p)
    log = p.wait_log("ready:")
    assert "fd:" not in log, log
    assert nbd_exports(f"nbd+unix://?socket={tmp_path / 'own.sock'}") == ["disk0"]
    assert p.stop() == 0


# --- sd_notify ----------------------------------------------------------------------------------

def _notified(tmp_path, procs, lines, **env):
    notify = NotifySocket(tmp_path / "notify")
    config = write_config(tmp_path / "notify.conf", lines)
    p = start_blockd_config(tmp_path, config, clean_env(NOTIFY_SOCKET=notify.address, **env))
    procs.append(p)
    return notify, p, config


def _go(conn: Conn, export: str) -> None:
    conn.handshake()
    replies = conn.go(export)
    assert replies[-1].type == REP_ACK, replies


def test_ready_only_once_every_listener_answers(tmp_path, procs):
    port = free_port()
    sock = tmp_path / "n.sock"
    lines = export_lines("disk0", None) + export_lines("disk1", None) + [
        f"nbd-server addr.type=unix,addr.path={sock}",
        f"nbd-server addr.type=inet,addr.host=127.0.0.1,addr.port={port}"]
    notify, p, _ = _notified(tmp_path, procs, lines)
    _, ready = notify.wait_for("READY", "1", process=p)
    # Straight after READY=1, without a retry: both listeners complete a handshake for both exports.
    for export in ("disk0", "disk1"):
        with Conn.connect(sock, timeout=2) as conn:
            _go(conn, export)
        with Conn(socket.create_connection(("127.0.0.1", port), timeout=2)) as conn:
            _go(conn, export)
    assert ready.get("MAINPID") == str(p.pid), ready
    status = ready.get("STATUS", "")
    assert "'disk0'" in status and "'disk1'" in status, status
    assert str(sock) in status and f"127.0.0.1:{port}" in status, status
    assert p.stop() == 0


def test_no_ready_when_a_listener_fails(tmp_path, procs):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        lines = export_lines("disk0", None) + [
            f"nbd-server addr.type=unix,addr.path={tmp_path / 'x.sock'}",
            f"nbd-server addr.type=inet,addr.host=127.0.0.1,addr.port={busy.getsockname()[1]}"]
        notify, p, _ = _notified(tmp_path, procs, lines)
        assert p.wait_exit() == 1, p.log_text()
        notify.collect(0.2)
        assert not any("READY=1" in t for t in notify.texts()), notify.texts()
        assert not (tmp_path / "x.sock").exists()
    finally:
        busy.close()


def test_watchdog_pings_at_half_the_period(tmp_path, procs):
    notify, p, _ = _notified(tmp_path, procs, export_lines("disk0", None) + [
        f"nbd-server addr.type=unix,addr.path={tmp_path / 'w.sock'}"], WATCHDOG_USEC="200000")
    notify.wait_for("READY", "1", process=p)
    start = len(notify.messages)
    notify.collect(2.05)
    pings = [t for t, fields, _ in notify.messages[start:] if fields.get("WATCHDOG") == "1"]
    # About 20 at half the period. Bounds a busy machine keeps: at least one ping per period on
    # average (what systemd needs), not a flood, and a median gap nearer half the period than a whole one.
    assert 10 <= len(pings) <= 30, f"{len(pings)} WATCHDOG=1 in 2.05 s with WATCHDOG_USEC=200000 (expected ~20)"
    gaps = sorted(b - a for a, b in zip(pings, pings[1:]))
    assert 0.05 <= gaps[len(gaps) // 2] <= 0.15, f"median gap {gaps[len(gaps) // 2]:.3f}s, gaps {gaps}"
    assert p.stop() == 0


def test_no_watchdog_for_another_pid(tmp_path, procs):
    notify, p, _ = _notified(tmp_path, procs, export_lines("disk0", None) + [
        f"nbd-server addr.type=unix,addr.path={tmp_path / 'w.sock'}"], WATCHDOG_USEC="100000", WATCHDOG_PID="1")
    notify.wait_for("READY", "1", process=p)
    notify.collect(0.4)
    assert not any("WATCHDOG=1" in t for t in notify.texts()), notify.texts()
    assert p.stop() == 0


def test_reloading_ready_and_stopping(tmp_path, procs):
    sock = tmp_path / "r.sock"
    lines = export_lines("disk0", None) + [f"nbd-server addr.type=unix,addr.path={sock}"]
    notify, p, config = _notified(tmp_path, procs, lines)
    notify.wait_for("READY", "1", process=p)

    write_config(config, lines + export_lines("disk1", None))
    before = time.monotonic_ns() // 1000
    p.send(signal.SIGHUP)
    reloading, fields = notify.wait_for("RELOADING", "1", after=1, process=p)
    after = time.monotonic_ns() // 1000
    # MONOTONIC_USEC is CLOCK_MONOTONIC when the reload began (systemd ignores a stale one).
    assert before <= int(fields["MONOTONIC_USEC"]) <= after, (before, fields, after)
    ready, fields = notify.wait_for("READY", "1", after=reloading + 1, process=p)
    assert "'disk1'" in fields.get("STATUS", ""), fields
    assert nbd_exports(f"nbd+unix://?socket={sock}") == ["disk0", "disk1"]

    p.send(signal.SIGTERM)
    stopping, _ = notify.wait_for("STOPPING", "1", after=ready + 1, process=p)
    assert p.wait_exit() == 0, p.log_text()
    kinds = [k for _, f, _ in notify.messages for k in ("READY", "RELOADING", "STOPPING") if f.get(k) == "1"]
    assert kinds == ["READY", "RELOADING", "READY", "STOPPING"], notify.texts()


def test_abstract_notify_socket(tmp_path, procs):
    notify = NotifySocket(abstract=f"blockd-test-{os.getpid()}-{time.monotonic_ns()}")
    try:
        config = write_config(tmp_path / "a.conf", export_lines("disk0", None) + [
            f"nbd-server addr.type=unix,addr.path={tmp_path / 'a.sock'}"])
        p = start_blockd_config(tmp_path, config, clean_env(NOTIFY_SOCKET=notify.address))
        procs.append(p)
        _, fields = notify.wait_for("READY", "1", process=p)
        assert "'disk0'" in fields["STATUS"]
        assert p.stop() == 0
    finally:
        notify.close()


# --- logging under systemd (JOURNAL_STREAM) -----------------------------------------------------

def _logged(tmp_path, procs, journal: bool, level_arg: list[str] = (), level_line: list[str] = ()):
    """blockd on a unix socket and 127.0.0.1:PORT; one good TCP client and one that sends bad client
    flags (a warning); returns (log, good client's port, bad client's port)."""
    port = free_port()
    notify = NotifySocket(tmp_path / "notify")
    config = write_config(tmp_path / "log.conf", export_lines("disk0", None) + list(level_line) + [
        f"nbd-server addr.type=unix,addr.path={tmp_path / 'log.sock'}",
        f"nbd-server addr.type=inet,addr.host=127.0.0.1,addr.port={port}"])
    env = clean_env(NOTIFY_SOCKET=notify.address, **({"JOURNAL_STREAM": "1:1"} if journal else {}))
    p = start_blockd_config(tmp_path, config, env, extra=list(level_arg))
    procs.append(p)
    notify.wait_for("READY", "1", process=p)
    with Conn(socket.create_connection(("127.0.0.1", port), timeout=5)) as conn:
        _go(conn, "disk0")
        good = conn.sock.getsockname()[1]
        assert conn.read(0, 4096).data == bytes(4096)
        conn.disconnect()
        assert conn.read_until_closed(5) == b""
    with Conn(socket.create_connection(("127.0.0.1", port), timeout=5)) as conn:
        bad = conn.sock.getsockname()[1]
        conn.handshake(client_flags=0xFFFFFFFF)
        conn.read_until_closed(5)
    p.wait_log(f"127.0.0.1:{bad}")
    assert p.stop() == 0, p.log_text()
    return p.log_text(), good, bad


def _lines_with(log: str, *words: str) -> list[str]:
    return [line for line in log.splitlines() if all(w in line for w in words)]


def test_journal_lines_carry_syslog_priorities_and_peers(tmp_path, procs):
    log, good, bad = _logged(tmp_path, procs, journal=True)
    lines = log.splitlines()
    assert lines and all(re.match(r"<[3-7]>\S", line) for line in lines), log
    assert "blockd:" not in log, log
    assert _lines_with(log, "<6>", "ready:"), log
    connected = _lines_with(log, f"127.0.0.1:{good}", "connected to export 'disk0'")
    assert connected and connected[0].startswith("<6>"), log
    assert _lines_with(log, f"127.0.0.1:{good}", "disconnected"), log
    warned = _lines_with(log, f"127.0.0.1:{bad}")
    assert warned and warned[0].startswith("<4>"), log
    assert not re.search(r"\d\d:\d\d:\d\d", log), f"timestamps in journal lines:\n{log}"


@pytest.mark.parametrize("where", ["command-line", "config-file"])
def test_log_level_warning_drops_info_lines(tmp_path, procs, where):
    if where == "command-line":
        log, good, bad = _logged(tmp_path, procs, journal=True, level_arg=["--log-level", "warning"])
    else:
        log, good, bad = _logged(tmp_path, procs, journal=True, level_line=["log-level warning"])
    assert not [line for line in log.splitlines() if not line.startswith(("<3>", "<4>"))], log
    warned = _lines_with(log, f"127.0.0.1:{bad}")
    assert warned and warned[0].startswith("<4>"), log
    assert f"127.0.0.1:{good}" not in log, log


def test_plain_lines_without_journal_stream(tmp_path, procs):
    log, good, bad = _logged(tmp_path, procs, journal=False)
    assert all(re.match(r"blockd: (error|warning|info|debug): ", line) for line in log.splitlines()), log
    assert _lines_with(log, "blockd: info: ", f"127.0.0.1:{good}: connected to export 'disk0'"), log
    assert _lines_with(log, "blockd: warning: ", f"127.0.0.1:{bad}"), log


def test_bad_client_warning_names_the_flags_sent(tmp_path, procs):
    """The warning for a client's unknown handshake flags quotes the flags it sent (0xffffffff here)."""
    log, good, bad = _logged(tmp_path, procs, journal=True)
    warned = _lines_with(log, f"127.0.0.1:{bad}")
    assert warned and "0xffffffff" in warned[0], warned
