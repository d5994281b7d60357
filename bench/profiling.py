"""py-spy on the Python processes during one phase, and a summary of where each spent its CPU.

`py-spy record` samples a process's Python stacks from outside (it reads its memory; run as
root, or with ptrace allowed) and writes a speedscope file. `--nonblocking` does not pause the
process for each sample: the profiled phase runs at close to its normal speed, at the price of
an occasional torn stack. Idle threads (waiting in epoll or on a lock) are not sampled, so a
function's share of samples is its share of the process's CPU time.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

SAMPLES_PER_SECOND = 100
# Without --native, py-spy sees no C frames: time spent inside uvloop's loop (which also runs
# httptools' parser and the sockets' reads and writes) lands on the Python frame that entered it.
EVENT_LOOP_FRAMES = ("Runner.run", "run_until_complete", "run_forever")


def py_spy() -> str:
    """The py-spy from the virtualenv we run in (the dev extra), else from PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is not installed: `make setup` installs it (dev extra)")
    return found


class Recording:
    """One `py-spy record` per process, for at most `seconds`; `stop()` ends them early (py-spy
    writes its file on SIGINT) and waits."""

    def __init__(self, pids: dict[str, int], directory: Path, seconds: float) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.files = {name: directory / f"{name}.speedscope.json" for name in pids}
        self.logs = {name: directory / f"{name}.py-spy.log" for name in pids}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        for name, pid in pids.items():
            command = [
                py_spy(), "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
                "--rate", str(SAMPLES_PER_SECOND), "--nonblocking", "--format", "speedscope",
                "--output", str(self.files[name]),
            ]  # fmt: skip
            with self.logs[name].open("wb") as log:
                self.processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def stop(self, timeout_s: float = 20.0) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in self.processes.values():
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass(frozen=True)
class Hotspot:
    function: str  # name (file:line)
    self_share: float  # of the process's samples, the function itself on top of the stack
    total_share: float  # the function anywhere on the stack


def hotspots(speedscope_file: Path, limit: int = 8) -> tuple[int, list[Hotspot]]:
    """The functions with the most samples of their own in a py-spy speedscope file."""
    document = json.loads(speedscope_file.read_text())
    frames = document["shared"]["frames"]
    # frame index → sampled time (py-spy weighs each sample by the interval it stands for)
    own: defaultdict[int, float] = defaultdict(float)  # the frame on top of the stack
    anywhere: defaultdict[int, float] = defaultdict(float)  # the frame anywhere on the stack
    samples = 0
    weights = 0.0
    for profile in document["profiles"]:  # one per thread
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            if not stack:
                continue
            samples += 1
            weights += weight
            own[stack[-1]] += weight
            for frame in set(stack):
                anywhere[frame] += weight
    result = []
    for frame, count in sorted(own.items(), key=lambda item: item[1], reverse=True)[:limit]:
        info = frames[frame]
        where = f"{_short_path(info.get('file') or '?')}:{info.get('line') or '?'}"
        name = f"{info['name']} ({where})"
        if info["name"] in EVENT_LOOP_FRAMES:
            name += ": the event loop's own C code (uvloop): socket reads and writes, HTTP parsing, scheduling"
        result.append(Hotspot(name, count / weights, anywhere[frame] / weights))
    return samples, result


def _short_path(path: str) -> str:
    for marker in ("site-packages/", "/src/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path.rsplit("/", 2)[-1] if "/" in path else path
