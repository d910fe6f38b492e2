"""The invocations the qemu-nbd differential suite runs, each with qemu-nbd and with blockd-nbd.

`args` are the program's arguments; SOCK stands for the unix socket of the run, PORT for a free TCP
port on 127.0.0.1, PIDFILE for a pid file path, all inside the run's own directory (the program
runs there, so relative image names work). `probes` are what the clients do once the server is up,
in order (see test_qemu_nbd_differential.PROBES); a case without probes expects the program to exit
by itself (an error, -h, -V, -L...). `source` says which tool runs it this way."""
from dataclasses import dataclass, field


@dataclass
class Case:
    name: str
    source: str
    args: list[str]
    probes: list[str] = field(default_factory=list)
    # "unix" (wait for SOCK), "tcp" (wait for PORT), "exit" (the program ends by itself), "fork"
    # (the program returns once serving; the server is found through PIDFILE)
    mode: str = "unix"


K = ["-k", "SOCK"]

CASES: list[Case] = [
    # --- serving, one client, then the server exits (no -t) ------------------------------------------
    Case("raw read-only, probed", "libguestfs (qemu-nbd -r FILE)", [*K, "-r", "disk.raw"], ["json"]),
    Case("raw -f raw map", "virt-v2v input", [*K, "-r", "-f", "raw", "disk.raw"], ["map"]),
    Case("raw data sha256", "kubevirt CDI import", [*K, "-r", "-f", "raw", "disk.raw"], ["sha"]),
    Case("qcow2 probed json", "OpenNebula datastore", [*K, "-r", "disk.qcow2"], ["json"]),
    Case("qcow2 map", "virtnbdbackup offline backup", [*K, "-r", "-f", "qcow2", "-x", "sda", "disk.qcow2"], ["map:sda"]),
    Case("qcow2 data sha256", "virtnbdbackup offline backup", [*K, "-r", "-f", "qcow2", "-x", "sda", "disk.qcow2"], ["sha:sda"]),
    Case("qcow2 writable json", "oVirt imageio upload", [*K, "-f", "qcow2", "disk.qcow2"], ["json"]),
    Case("raw writable, write then exit", "nbdcopy to qemu-nbd", [*K, "-f", "raw", "disk.raw"], ["write"]),
    Case("qcow2 writable, write then exit", "virtnbdbackup restore",
         [*K, "-f", "qcow2", "-x", "sda", "--discard=unmap", "disk.qcow2"], ["write:sda"]),
    Case("backing chain map", "libguestfs overlay", [*K, "-r", "-f", "qcow2", "top.qcow2"], ["map"]),
    Case("backing chain sha256", "libguestfs overlay", [*K, "-r", "-f", "qcow2", "top.qcow2"], ["sha"]),
    Case("allocation depth", "oVirt imageio (--allocation-depth)", [*K, "-r", "-f", "qcow2", "-A", "top.qcow2"], ["depth"]),
    Case("allocation depth json", "oVirt imageio (--allocation-depth)", [*K, "-r", "-f", "qcow2", "-A", "top.qcow2"], ["json"]),
    Case("export name and description", "virtnbdbackup", [*K, "-r", "-f", "raw", "-x", "vda", "-D", "a disk", "disk.raw"],
         ["json:vda"]),
    Case("long options with =", "oVirt imageio",
         ["--socket=SOCK", "--read-only", "--format=qcow2", "--export-name=", "--cache=none", "--aio=native", "disk.qcow2"],
         ["json"]),
    Case("oVirt download options", "oVirt imageio download",
         ["--socket=SOCK", "--persistent", "--shared=8", "--format=qcow2", "--export-name=", "--cache=none",
          "--aio=native", "--read-only", "--allocation-depth", "top.qcow2"], ["depth", "map", "sha"]),
    Case("oVirt upload options", "oVirt imageio upload",
         ["--socket=SOCK", "--persistent", "--shared=8", "--format=raw", "--export-name=", "--cache=none", "--aio=native",
          "--discard=unmap", "--detect-zeroes=unmap", "disk.raw"], ["json", "write", "sha"]),
    Case("cache=unsafe shared=0", "virt-v2v output",
         [*K, "-t", "--shared=0", "--cache=unsafe", "--discard=unmap", "-f", "qcow2", "disk.qcow2"], ["json", "sha"]),
    Case("aio io_uring, writethrough", "libvirt backup", [*K, "-t", "-f", "raw", "--aio=io_uring", "--cache=writethrough",
                                                        "disk.raw"], ["write", "sha"]),
    Case("detect-zeroes on", "OpenNebula", [*K, "-t", "-f", "raw", "--detect-zeroes=on", "disk.raw"], ["zero-write", "map"]),
    Case("nocache -n", "OpenNebula", [*K, "-n", "-r", "-f", "raw", "disk.raw"], ["sha"]),
    Case("offset -o", "kubevirt (partition inside a disk)", [*K, "-r", "-f", "raw", "-o", "1048576", "disk.raw"], ["json"]),
    Case("image-opts", "libguestfs --image-opts",
         [*K, "-r", "--image-opts", "driver=qcow2,file.driver=file,file.filename=disk.qcow2"], ["map"]),
    Case("image-opts bare file name", "libguestfs --image-opts", [*K, "-r", "--image-opts", "disk.qcow2"], ["json"]),
    Case("snapshot -s writes go to an overlay", "libguestfs (throwaway writes)", [*K, "-s", "-f", "qcow2", "disk.qcow2"],
         ["write"]),
    Case("persistent: two clients in turn", "virtnbdbackup", [*K, "-t", "-r", "-f", "qcow2", "disk.qcow2"],
         ["json", "map", "sha"]),
    Case("tcp 127.0.0.1", "kubevirt importer over TCP", ["-b", "127.0.0.1", "-p", "PORT", "-r", "-f", "raw", "disk.raw"],
         ["json"], mode="tcp"),
    Case("tcp persistent", "OpenNebula over TCP", ["-b", "127.0.0.1", "-p", "PORT", "-t", "-f", "qcow2", "disk.qcow2"],
         ["map", "sha"], mode="tcp"),
    Case("fork and pid-file", "OpenNebula (--fork --pid-file)",
         ["--fork", "--pid-file=PIDFILE", *K, "-t", "-r", "-f", "raw", "disk.raw"], ["sha"], mode="fork"),
    Case("list own export", "qemu-nbd -L against it", [*K, "-t", "-r", "-f", "raw", "-x", "vda", "-D", "disk", "disk.raw"],
         ["list", "selflist"]),
    Case("list writable qcow2 export", "qemu-nbd -L against it", [*K, "-t", "-f", "qcow2", "-A", "top.qcow2"], ["list"]),
    Case("shared 1: second client waits", "kernel nbd-client reconnect", [*K, "-t", "-r", "-f", "raw", "disk.raw"], ["wait"]),
    Case("shared 2: two at once", "oVirt (--shared)", [*K, "-t", "-e", "2", "-r", "-f", "raw", "disk.raw"], ["two"]),
    Case("no -t: waiting client dropped at exit", "qemu-nbd semantics", [*K, "-r", "-f", "raw", "disk.raw"], ["wait"]),
    Case("verbose -v", "debugging", [*K, "-v", "-r", "-f", "raw", "disk.raw"], ["sha"]),
    Case("trace option ignored", "debugging", [*K, "-T", "nbd_*", "-r", "-f", "raw", "disk.raw"], ["json"]),

    # --- errors ----------------------------------------------------------------------------------------
    Case("no file", "usage", [*K], mode="exit"),
    Case("two files", "usage", [*K, "disk.raw", "disk.qcow2"], mode="exit"),
    Case("missing file", "user error", [*K, "missing.img"], mode="exit"),
    Case("unknown format", "user error", [*K, "-f", "bogus", "disk.raw"], mode="exit"),
    Case("qcow2 format on a raw file", "user error", [*K, "-f", "qcow2", "disk.raw"], mode="exit"),
    Case("relative socket path", "user error", ["-k", "rel.sock", "disk.raw"], mode="exit"),
    Case("socket in a missing directory", "user error", ["-k", "/nonexistent/dir/nbd.sock", "-f", "raw", "disk.raw"],
         mode="exit"),
    Case("bad shared count", "user error", [*K, "-e", "x", "disk.raw"], mode="exit"),
    Case("negative shared count", "user error", [*K, "-e", "-1", "disk.raw"], mode="exit"),
    Case("bad cache mode", "user error", [*K, "--cache=fast", "disk.raw"], mode="exit"),
    Case("-n and --cache", "user error", [*K, "-n", "--cache=none", "disk.raw"], mode="exit"),
    Case("bad aio mode", "user error", [*K, "--aio=fast", "disk.raw"], mode="exit"),
    Case("bad discard mode", "user error", [*K, "--discard=always", "disk.raw"], mode="exit"),
    Case("bad detect-zeroes mode", "user error", [*K, "--detect-zeroes=yes", "disk.raw"], mode="exit"),
    Case("detect-zeroes unmap without discard", "user error", [*K, "--detect-zeroes=unmap", "disk.raw"], mode="exit"),
    Case("unknown long option", "user error", [*K, "--bogus", "disk.raw"], mode="exit"),
    Case("unknown short option", "user error", [*K, "-Z", "disk.raw"], mode="exit"),
    Case("ambiguous long option", "user error", [*K, "--p", "1", "disk.raw"], mode="exit"),
    Case("option missing its value", "user error", ["disk.raw", "-x"], mode="exit"),
    Case("flag given a value", "user error", [*K, "--read-only=yes", "disk.raw"], mode="exit"),
    Case("bad offset", "user error", [*K, "-o", "x", "disk.raw"], mode="exit"),
    Case("offset past the end", "user error", [*K, "-f", "raw", "-o", "99999999", "disk.raw"], mode="exit"),
    Case("image-opts with -f", "user error", [*K, "--image-opts", "-f", "raw", "disk.raw"], mode="exit"),
    Case("image-opts without driver or file", "user error", [*K, "--image-opts", "foo=bar"], mode="exit"),
    Case("bitmap not found (raw)", "virtnbdbackup without bitmaps", [*K, "-f", "raw", "-B", "b0", "disk.raw"], mode="exit"),
    Case("bitmap not found (qcow2)", "virtnbdbackup without bitmaps", [*K, "-f", "qcow2", "-B", "b0", "disk.qcow2"],
         mode="exit"),
    Case("snapshot not found", "OpenNebula -l", [*K, "-f", "qcow2", "-l", "nosuch", "disk.qcow2"], mode="exit"),
    Case("snapshot on raw", "OpenNebula -l", [*K, "-f", "raw", "-l", "s1", "disk.raw"], mode="exit"),
    Case("bad snapshot parameter", "OpenNebula -l", [*K, "-l", "snapshot.foo=1", "disk.qcow2"], mode="exit"),
    Case("tls-authz without tls-creds", "user error", [*K, "--tls-authz=a", "disk.raw"], mode="exit"),
    Case("tls-creds of no object", "user error", ["-b", "127.0.0.1", "-p", "PORT", "--tls-creds=t0", "disk.raw"],
         mode="exit"),
    Case("tls-creds with a unix socket", "user error", [*K, "--tls-creds=t0", "disk.raw"], mode="exit"),
    Case("object of unknown type", "user error", [*K, "--object", "foo,id=x", "disk.raw"], mode="exit"),
    Case("object without id", "user error", [*K, "--object", "secret", "disk.raw"], mode="exit"),
    Case("pid file in a missing directory", "user error", [*K, "-f", "raw", "--pid-file=/nonexistent/p.pid", "disk.raw"],
         mode="exit"),
    Case("export name too long", "user error", [*K, "-x", "n" * 4097, "disk.raw"], mode="exit"),
    Case("list with a file", "usage", ["-L", *K, "disk.raw"], mode="exit"),
    Case("list with per-device options", "usage", ["-L", *K, "-x", "a"], mode="exit"),
    Case("list with --fork", "usage", ["-L", *K, "--fork"], mode="exit"),
    Case("list of nothing listening", "user error", ["-L", "-k", "/nonexistent/nbd.sock"], mode="exit"),
    Case("list over refused TCP", "user error", ["-L", "-b", "127.0.0.1", "-p", "PORT"], mode="exit"),
    Case("disconnect a missing device", "OpenNebula (-d)", ["-d", "/dev/nbd-missing"], mode="exit"),
    Case("connect a missing device", "OpenNebula (-c)", [*K, "-f", "raw", "-c", "/dev/nbd-missing", "disk.raw"], mode="exit"),
    Case("help", "usage", ["--help"], mode="exit"),
    Case("version", "usage", ["-V"], mode="exit"),
]
