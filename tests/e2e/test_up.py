"""`orbilnot up` from nothing: it brings up PostgreSQL, Kafka, the services and the gateway, the
demo succeeds against it, and SIGTERM or Ctrl-C (SIGINT) stops everything it started; a normal
start and a Ctrl-C log no ERROR and no traceback, and stop everything within 5 s (issue 11)."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

from orbilnot.infra import free_ports, process_cmdline
from orbilnot.infra.keycloak import LocalKeycloak
from support import eventually_sync

REPO = Path(__file__).resolve().parents[2]


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, their children, …), from /proc's parent links."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid …": comm may hold spaces and parentheses; split after the last ')'.
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait() is missing


def _up_env(home: Path) -> dict[str, str]:
    ports = free_ports(7)
    return {
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


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_ctrl_c_or_closing_the_terminal_after_an_order_is_clean_and_leaves_nothing_running_within_5s(
    stop_signal: signal.Signals,
) -> None:
    """Issue 11, item 5. Ctrl-C in a terminal signals the whole foreground process group, not
    `up` alone: every service, PostgreSQL and Kafka get the SIGINT too, and `up` then stops them
    as well. So `up` runs in a session of its own and the SIGINT goes to that group. Closing the
    terminal (SIGHUP to the group) stops everything the same way; the services, in groups of
    their own, never see that SIGHUP, so without `up`'s handler they were left running. The client
    keeps its keep-alive connection to the gateway open through the stop, as a browser would."""
    home = Path(tempfile.mkdtemp(prefix="orbilnot-up-"))
    env = _up_env(home)
    gateway = f"http://127.0.0.1:{env['ORBILNOT_GATEWAY_PORT']}"
    log = home / "up.log"
    with log.open("wb") as output:
        up = subprocess.Popen(
            [sys.executable, "-m", "orbilnot.cli", "up"],
            env={**env, "LOG_LEVEL": "INFO"},
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
    try:
        eventually_sync(
            lambda: up.poll() is None and "orbilnot is up" in log.read_text(errors="replace"),
            bool,
            timeout_s=90,
            what="orbilnot up",
        )
        with httpx.Client(base_url=gateway, timeout=10) as http:
            account = http.post("/account/", json={"actionType": "CREATE_NEW", "amount": 0}).json()
            order = http.post("/order/", json={"accountId": account, "amount": 10}).json()
            eventually_sync(
                lambda: http.get(f"/orders/{account}/{order}").json()["status"],
                lambda status: status == "CANCELLED",  # nothing deposited: denied, the saga is done
                timeout_s=30,
                what="the order's outcome",
            )
            children = _descendants(up.pid)
            # The four services and Kafka; PostgreSQL detaches (pg_ctl), found below by its directory.
            assert len(children) >= 5, children

            os.killpg(up.pid, stop_signal)
            started = time.monotonic()
            returncode = up.wait(30)
            took_s = time.monotonic() - started
        left = eventually_sync(
            lambda: [pid for pid in children if _alive(pid)], lambda pids: not pids, timeout_s=1, what="children gone"
        )
        output_text = log.read_text(errors="replace")
        assert returncode == 0, output_text[-3000:]
        assert took_s < 5.0, f"{stop_signal.name} took {took_s:.1f}s\n{output_text[-3000:]}"
        assert left == []
        assert _pids_under(home) == []  # PostgreSQL and Kafka, whoever their parent is now
        for bad in ("ERROR", "Traceback"):
            assert bad not in output_text, output_text
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        shutil.rmtree(home, ignore_errors=True)


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
    env = _up_env(home)
    gateway_port = env["ORBILNOT_GATEWAY_PORT"]
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
            [sys.executable, "-m", "orbilnot.cli", "demo", "--gateway", f"http://127.0.0.1:{gateway_port}"],
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
        serving = subprocess.run(["pgrep", "-f", f"serve .* --port {gateway_port}$"], capture_output=True)
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
