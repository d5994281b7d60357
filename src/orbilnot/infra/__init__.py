"""Local infrastructure for development and tests: a PostgreSQL server and a single-node Kafka
broker run as plain processes on this machine, no containers (SPEC §7).

`local.LocalInfra` puts both under one directory; `postgres.LocalPostgres` and `kafka.LocalKafka`
manage one server each. This module holds the few process helpers both need.
"""

from __future__ import annotations

import fcntl
import random
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (created if missing), so that two processes
    (two `orbilnot infra up`, two pytest runs) never start or download the same thing at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def process_cmdline(pid: int) -> list[str] | None:
    """The command line of a live process, or None if there is none with that pid. A zombie
    counts as dead: it has exited and only waits to be reaped by its parent."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # The state follows the parenthesised command name, which may itself contain spaces.
            state = stat.read().rsplit(b")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            args = cmdline.read()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    if state in (b"Z", b"X"):
        return None
    return [arg.decode(errors="replace") for arg in args.split(b"\0") if arg]


def wait_for_exit(pid: int, timeout_s: float) -> bool:
    """Wait until process `pid` is gone; True if it went within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while process_cmdline(pid) is not None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def read_pid(path: Path) -> int | None:
    """The pid in the first line of a pid file, or None if the file is missing or garbled."""
    try:
        first_line = path.read_text().split("\n", 1)[0].strip()
        return int(first_line)
    except (FileNotFoundError, ValueError):
        return None


def running_pid(
    pid_file: Path, own_child: subprocess.Popen[bytes] | None, is_ours: Callable[[list[str]], bool]
) -> int | None:
    """The pid in `pid_file` if that process is alive and ours, else None.

    Our own child is judged by poll(), which is exact (and reaps it once it has exited), whereas
    /proc may not show its command line yet in the first moments after exec. Any other pid may
    have been recycled and belong to anything: `is_ours` judges its command line."""
    pid = read_pid(pid_file)
    if pid is None:
        return None
    if own_child is not None and own_child.pid == pid:
        return pid if own_child.poll() is None else None
    cmdline = process_cmdline(pid)
    return pid if cmdline is not None and is_ours(cmdline) else None


def free_ports(count: int) -> list[int]:
    """`count` different TCP ports on 127.0.0.1 that nobody uses right now, for tests and throwaway
    servers. They are drawn from below the kernel's ephemeral range: a port from inside it could
    be taken as the local end of some outgoing connection before our server binds it (or while
    the server is down for a restart)."""
    first_ephemeral = _first_ephemeral_port()
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(_FIRST_FREE_PORT, first_ephemeral)
        if port not in ports and _can_bind(port):
            ports.append(port)
    return ports


_FIRST_FREE_PORT = 20000


def _first_ephemeral_port() -> int:
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768  # Linux's default
    return max(first, _FIRST_FREE_PORT + 1000)


def _can_bind(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
