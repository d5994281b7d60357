"""The image built from this checkout runs the system (issue 12): migrate, the three services and
the gateway as containers serve the SPEC §1 scenario and the original Postman collection, as uid
10001 on a read-only root filesystem, and stop cleanly on `docker stop`.

The tests share one set of containers and run in this order; the last one stops them.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
from image_support import MEASURED, ContainerSystem, docker, inspect

from support import run_postman_collection

IMAGE_USER = "10001:10001"
# Run inside each container as its own user: a write under / must fail because the filesystem is
# read-only (EROFS, checked by the kernel before any permission), and /tmp must take one.
WRITE_PROBE = """
import errno
try:
    open("/opt/orbilnot/written-by-the-image-test", "w")
except OSError as error:
    print("root:", errno.errorcode[error.errno])
else:
    print("root: WRITABLE")
with open("/tmp/written-by-the-image-test", "w") as scratch:
    scratch.write("ok")
print("tmp: ok")
"""


def test_migrate_brings_an_empty_database_up_to_date_and_sets_the_service_roles(system: ContainerSystem) -> None:
    assert inspect(system.containers["migrate"])["State"]["ExitCode"] == 0
    logs = docker("logs", system.containers["migrate"])
    assert "service roles set: billing, notification, order" in logs.stdout + logs.stderr

    async def schemas() -> set[str]:
        connection = await asyncpg.connect(system.database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            rows = await connection.fetch("SELECT schema_name FROM information_schema.schemata")
        finally:
            await connection.close()
        return {row["schema_name"] for row in rows}

    assert {"billing", "order_service", "notification_service"} <= asyncio.run(schemas())


def test_orbilnot_demo_in_a_container_passes_against_the_containerised_gateway(system: ContainerSystem) -> None:
    result = docker(*system.run_args("demo", {}), "demo", "--gateway", system.gateway, timeout_s=180, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    steps = [line.split(".")[0] for line in result.stdout.splitlines() if line.startswith("✔")]
    assert steps == [f"✔ {n}" for n in range(1, 9)], result.stdout


def test_the_original_postman_collection_passes_against_the_containerised_gateway(system: ContainerSystem) -> None:
    result = run_postman_collection(system.gateway)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "AssertionError" not in result.stdout


def test_every_container_runs_as_uid_10001_on_a_read_only_root_filesystem(system: ContainerSystem) -> None:
    for role, name in system.containers.items():
        details = inspect(name)
        assert details["Config"]["User"] == IMAGE_USER, role
        assert details["HostConfig"]["ReadonlyRootfs"] is True, role
        assert details["HostConfig"]["Tmpfs"] == {"/tmp": ""}, role
    for role, name in system.serving().items():
        # The process itself, seen from this machine (no user namespaces: the same ids).
        pid = inspect(name)["State"]["Pid"]
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        assert status["Uid"].split() == ["10001"] * 4, (role, status["Uid"])
        assert status["Gid"].split() == ["10001"] * 4, (role, status["Gid"])
        probe = docker("exec", name, "python", "-c", WRITE_PROBE, check=False)
        assert probe.stdout.split("\n")[:2] == ["root: EROFS", "tmp: ok"], (role, probe.stdout, probe.stderr)


def test_docker_stop_ends_each_container_within_10s_with_exit_code_0(system: ContainerSystem) -> None:
    # The gateway first, as a rolling shutdown would; each on its own, so its time is its own.
    stopped: dict[str, tuple[float, int]] = {}
    for role in ("gateway", "notification", "order", "billing"):
        name = system.serving()[role]
        started = time.monotonic()
        docker("stop", "--time", "10", name, timeout_s=60)
        elapsed = time.monotonic() - started
        state = inspect(name)["State"]
        assert not state["Running"], role
        stopped[role] = (elapsed, state["ExitCode"])
    MEASURED["docker stop"] = ", ".join(f"{role} {s:.1f} s (exit {code})" for role, (s, code) in stopped.items())
    # `docker stop` kills after 10 s (exit 137), so exit 0 also says that each went by itself.
    assert {role: code for role, (_, code) in stopped.items()} == dict.fromkeys(stopped, 0)
    assert all(elapsed < 10 for elapsed, _ in stopped.values()), stopped
