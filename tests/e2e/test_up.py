"""`orbilnot up` from nothing: it brings up PostgreSQL, Kafka, the services and the gateway, the
demo succeeds against it, and SIGTERM or Ctrl-C (SIGINT) stops everything it started."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from orbilnot.infra import free_ports, process_cmdline
from support import eventually_sync

REPO = Path(__file__).resolve().parents[2]


def _pids_under(home: Path) -> list[int]:
    """Processes whose command line mentions `home` (PostgreSQL and Kafka run from there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            cmdline = process_cmdline(int(entry.name))
            if cmdline and any(str(home) in arg for arg in cmdline):
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_up_runs_the_demo_and_leaves_nothing_behind(stop_signal: signal.Signals) -> None:
    home = Path(tempfile.mkdtemp(prefix="orbilnot-up-"))
    ports = free_ports(7)
    env = {
        **os.environ,
        "ORBILNOT_HOME": str(home),
        "ORBILNOT_KAFKA_LIB": str(REPO / ".orbilnot" / "kafka-lib"),
        "ORBILNOT_PG_PORT": str(ports[0]),
        "ORBILNOT_KAFKA_PORT": str(ports[1]),
        "ORBILNOT_KAFKA_CONTROLLER_PORT": str(ports[2]),
        "ORBILNOT_GATEWAY_PORT": str(ports[3]),
        "ORBILNOT_BILLING_PORT": str(ports[4]),
        "ORBILNOT_ORDER_PORT": str(ports[5]),
        "ORBILNOT_NOTIFICATION_PORT": str(ports[6]),
    }
    log = home / "up.log"
    with log.open("wb") as output:
        up = subprocess.Popen([sys.executable, "-m", "orbilnot.cli", "up"], env=env, stdout=output, stderr=output)
    try:
        eventually_sync(
            lambda: up.poll() is None and "orbilnot is up" in log.read_text(errors="replace"),
            bool,
            timeout_s=90,
            what="orbilnot up",
        )
        demo = subprocess.run(
            [sys.executable, "-m", "orbilnot.cli", "demo", "--gateway", f"http://127.0.0.1:{ports[3]}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "all 8 steps succeeded" in demo.stdout

        up.send_signal(stop_signal)
        assert up.wait(30) == 0, log.read_text(errors="replace")[-3000:]
        leftovers = eventually_sync(lambda: _pids_under(home), lambda pids: not pids, timeout_s=15, what="cleanup")
        assert leftovers == []
        serving = subprocess.run(["pgrep", "-f", f"serve .* --port {ports[3]}$"], capture_output=True)
        assert serving.returncode == 1, "the gateway process is still running"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        shutil.rmtree(home, ignore_errors=True)
