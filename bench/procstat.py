"""CPU time and memory of the measured processes, from /proc (Linux).

CPU is user + system time from /proc/<pid>/stat. PostgreSQL runs a process per connection: its
figure is the postmaster's own time, plus the time of its children that have exited (the
postmaster reaps them, so the kernel adds them to its cutime/cstime), plus that of every live
child (backends, walwriter, checkpointer, ...). Memory is the resident set (VmRSS) of one process;
for PostgreSQL the proportional set size (Pss) summed over its processes, since every backend
maps the same shared buffers and a sum of RSS would count them once per backend.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name, in parentheses, may hold spaces: split after its closing parenthesis.
    # Fields from there: state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17).
    return raw.rsplit(b")", 1)[1].decode().split()


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


def cpu_seconds(pid: int, *, with_children: bool = False) -> float:
    """CPU seconds used by `pid` so far (and by its children, for PostgreSQL); 0 if it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    ticks = utime + stime
    if with_children:
        ticks += cutime + cstime
        for child in _children(pid):
            child_fields = _stat_fields(child)
            if child_fields is not None:
                ticks += int(child_fields[11]) + int(child_fields[12])
    return ticks / TICKS_PER_SECOND


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmHWM") / 1024


def pss_mb_with_children(pid: int) -> float:
    total_kb = 0
    for process in (pid, *_children(pid)):
        try:
            for line in Path(f"/proc/{process}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
                    break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total_kb / 1024


@dataclass(frozen=True)
class Watched:
    """A process to measure; `tree` for PostgreSQL (a process per connection)."""

    pid: int
    tree: bool = False


def cpu_snapshot(processes: Mapping[str, Watched]) -> dict[str, float]:
    return {name: cpu_seconds(p.pid, with_children=p.tree) for name, p in processes.items()}


def cpu_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after}


def memory_mb(processes: Mapping[str, Watched]) -> dict[str, float]:
    return {name: pss_mb_with_children(p.pid) if p.tree else rss_mb(p.pid) for name, p in processes.items()}
