"""The image test's helpers: `docker` and the system as containers of one image."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from support import eventually_sync

REPO = Path(__file__).resolve().parents[2]
ENGINE = REPO / "scripts" / "docker-engine.sh"
BUILD = REPO / "scripts" / "build-image.sh"
# The tag the test builds; kept afterwards (with the classic builder the tagged image and its
# parents are the layer cache that makes the next build take seconds).
IMAGE_TAG = "orbilnot:image-test"
SERVICES = ("billing", "order", "notification")
SERVING = (*SERVICES, "gateway")

# What the run measured, printed at the end of the session (pytest_terminal_summary).
MEASURED: dict[str, str] = {}


def docker(*args: str, timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout_s)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def inspect(container: str) -> dict[str, Any]:
    return dict(json.loads(docker("container", "inspect", container).stdout)[0])


@dataclass
class ContainerSystem:
    """The system as containers of one image; the gateway at `gateway`."""

    image: str
    label: str
    # The database's owner's URL (the services connect as their own roles).
    database_url: str
    urls: dict[str, str] = field(default_factory=dict)
    # Every container this session created, by role.
    containers: dict[str, str] = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        return self.urls["gateway"]

    def run_args(self, role: str, env: dict[str, str], *options: str) -> list[str]:
        """`docker run` of a new container for `role`, up to and including the image."""
        name = f"{self.label}-{role}"
        self.containers[role] = name
        environment = [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]
        return [
            "run",
            "--name",
            name,
            "--label",
            f"orbilnot-image-test={self.label}",
            "--network",
            "host",
            "--read-only",
            "--tmpfs",
            "/tmp",
            *environment,
            *options,
            self.image,
        ]

    def migrate(self, env: dict[str, str]) -> None:
        result = docker(*self.run_args("migrate", env), "migrate", timeout_s=300, check=False)
        assert result.returncode == 0, f"migrate exited with {result.returncode}:\n{result.stdout}{result.stderr}"

    def serve(self, role: str, port: int, env: dict[str, str]) -> None:
        docker(*self.run_args(role, env, "--detach"), "serve", role, "--host", "127.0.0.1", "--port", str(port))
        url = f"http://127.0.0.1:{port}"
        self.urls[role] = url
        eventually_sync(lambda: self._ready(role), bool, timeout_s=120, what=f"{role} container ready")

    def serving(self) -> dict[str, str]:
        """The long-running containers (not migrate or demo), by role."""
        return {role: name for role, name in self.containers.items() if role in SERVING}

    def _ready(self, role: str) -> bool:
        state = inspect(self.containers[role])["State"]
        if not state["Running"]:
            logs = docker("logs", "--tail", "40", self.containers[role], check=False)
            raise AssertionError(f"{role} container exited ({state['ExitCode']}):\n{logs.stdout}{logs.stderr}")
        try:
            return httpx.get(f"{self.urls[role]}/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def remove_all(self) -> None:
        """Every container of this session, whatever state it is in; logs first, for a failure."""
        for role, name in self.containers.items():
            logs = docker("logs", "--tail", "15", name, check=False)
            print(f"--- {role}\n{logs.stdout}{logs.stderr}")
        listed = docker("ps", "--all", "--quiet", "--filter", f"label=orbilnot-image-test={self.label}", check=False)
        ids = listed.stdout.split()
        if ids:
            docker("rm", "--force", *ids, check=False)
