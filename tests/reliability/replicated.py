"""The replicated stack of the reliability suite: replicas of every service as separate
`orbilnot serve` processes behind one gateway; processes can be killed and restarted.

Its own module, not `conftest`: with all test directories in one pytest run (`make test`), the
name `conftest` means whichever directory's conftest was loaded last, so `from conftest import`
fails in the test modules here.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from orbilnot.infra import free_ports
from orbilnot.up import gateway_env
from support import Stack

SERVICES = ("billing", "order", "notification")
LONG = os.environ.get("ORBILNOT_CHAOS") == "long"


class ReplicatedStack(Stack):
    """`replicas` processes of each service (named `billing-1`, `billing-2`, …) and one gateway
    whose upstream variables list them all."""

    def __init__(self, env: dict[str, str], logs: Path, replicas: int) -> None:
        super().__init__(urls={}, env=env, logs=logs)
        self.replicas = replicas
        self.ports: dict[str, int] = {}

    def start_all(self) -> None:
        ports = iter(free_ports(len(SERVICES) * self.replicas + 1))
        for service in SERVICES:
            for n in range(1, self.replicas + 1):
                name = f"{service}-{n}"
                self.ports[name] = next(ports)
                self.start(name, service, self.ports[name])
        self.ports["gateway"] = next(ports)
        self.start("gateway", "gateway", self.ports["gateway"], self._gateway_env())

    def kill(self, name: str) -> None:
        """kill -9: no shutdown code runs."""
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def restart(self, name: str) -> None:
        if name == "gateway":
            self.start(name, "gateway", self.ports[name], self._gateway_env())
        else:
            self.start(name, name.rsplit("-", 1)[0], self.ports[name])

    def _gateway_env(self) -> dict[str, str]:
        """Each upstream variable lists every replica of its service."""
        replicas = range(1, self.replicas + 1)
        return gateway_env({}, {s: ",".join(self.urls[f"{s}-{n}"] for n in replicas) for s in SERVICES})
