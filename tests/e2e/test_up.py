"""`orbilnot up` from nothing: it brings up PostgreSQL, Kafka, the services and the gateway, the
demo succeeds against it, and SIGTERM or Ctrl-C (SIGINT) stops everything it started."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import httpx
import pytest

from orbilnot.infra import free_ports, process_cmdline
from orbilnot.infra.keycloak import LocalKeycloak
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


def test_up_with_auth_runs_the_demo_as_alice_and_infra_speaks_of_keycloak(keycloak: LocalKeycloak) -> None:
    """`orbilnot up --auth` and `orbilnot demo --auth`, on the session's Keycloak (reused, as `up`
    reuses whatever already runs), then `infra env|status`, `orbilnot token` and `infra down`."""
    home = keycloak.data_dir.parent
    ports = free_ports(7)
    env = {
        **os.environ,
        "ORBILNOT_HOME": str(home),
        "ORBILNOT_KAFKA_LIB": str(REPO / ".orbilnot" / "kafka-lib"),
        "ORBILNOT_KEYCLOAK_PORT": str(keycloak.port),
        "ORBILNOT_PG_PORT": str(ports[0]),
        "ORBILNOT_KAFKA_PORT": str(ports[1]),
        "ORBILNOT_KAFKA_CONTROLLER_PORT": str(ports[2]),
        "ORBILNOT_GATEWAY_PORT": str(ports[3]),
        "ORBILNOT_BILLING_PORT": str(ports[4]),
        "ORBILNOT_ORDER_PORT": str(ports[5]),
        "ORBILNOT_NOTIFICATION_PORT": str(ports[6]),
    }

    def orbilnot(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "orbilnot.cli", *args], env=env, capture_output=True, text=True, timeout=120
        )

    log = home / "up.log"
    with log.open("wb") as output:
        up = subprocess.Popen(
            [sys.executable, "-m", "orbilnot.cli", "up", "--auth"], env=env, stdout=output, stderr=output
        )
    try:
        eventually_sync(
            lambda: up.poll() is None and "orbilnot is up" in log.read_text(errors="replace"),
            bool,
            timeout_s=120,
            what="orbilnot up --auth",
        )
        gateway = f"http://127.0.0.1:{ports[3]}"
        assert httpx.get(f"{gateway}/account/{uuid.uuid4()}").status_code == 401  # the API wants tokens now

        demo = orbilnot("demo", "--auth", "--gateway", gateway)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "bob asks for alice's account: 404" in demo.stdout
        assert "all 11 steps succeeded" in demo.stdout

        exported = dict(shlex.split(line)[1].split("=", 1) for line in orbilnot("infra", "env").stdout.splitlines())
        assert exported["AUTH_MODE"] == "oidc"
        assert exported["OIDC_ISSUER_URL"] == keycloak.issuer_url
        assert exported["OIDC_AUDIENCE"] == "orbilnot-api"
        status = orbilnot("infra", "status").stdout
        assert f"keycloak: running ({keycloak.issuer_url})" in status
        for user, password in keycloak.passwords().items():
            if user in ("alice", "bob", "admin"):
                assert f"{user:<6} {password}" in status

        token = orbilnot("token", "bob").stdout.splitlines()[-1]
        assert httpx.get(f"{gateway}/orders/{uuid.uuid4()}", headers={"Authorization": f"Bearer {token}"}).json() == []

        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0, log.read_text(errors="replace")[-3000:]
        assert keycloak.is_running(), "up leaves a Keycloak it did not start running"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    # Last, since it ends the session's Keycloak: `infra down` stops it too.
    assert orbilnot("infra", "down").returncode == 0
    assert not keycloak.is_running()
