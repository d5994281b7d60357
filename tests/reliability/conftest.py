"""The reliability suite's stack: replicas of every service as separate `orbilnot serve`
processes behind a gateway that balances across them, on the session's real PostgreSQL and
Kafka, with a database and topics of each scenario's own. Processes can be killed and restarted.

Short form in `make test`; `make chaos` sets ORBILNOT_CHAOS=long for the long form.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Iterator

import pytest

from orbilnot.infra import free_ports
from support import Stack, create_migrated_database

SERVICES = ("billing", "order", "notification")
LONG = os.environ.get("ORBILNOT_CHAOS") == "long"


class ReplicatedStack(Stack):
    """`replicas` processes of each service (named `billing-1`, `billing-2`, …) and one gateway
    whose upstream variables list them all."""

    def __init__(self, env: dict[str, str], logs: object, replicas: int) -> None:
        super().__init__(urls={}, env=env, logs=logs)  # type: ignore[arg-type]
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
        self.start(
            "gateway",
            "gateway",
            self.ports["gateway"],
            {
                f"{service.upper()}_URL": ",".join(self.urls[f"{service}-{n}"] for n in range(1, self.replicas + 1))
                for service in SERVICES
            },
        )

    def kill(self, name: str) -> None:
        """kill -9: no shutdown code runs."""
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def restart(self, name: str) -> None:
        service = name.rsplit("-", 1)[0] if name != "gateway" else "gateway"
        extra = None
        if service == "gateway":
            extra = {
                f"{s.upper()}_URL": ",".join(self.urls[f"{s}-{n}"] for n in range(1, self.replicas + 1))
                for s in SERVICES
            }
        self.start(name, service, self.ports[name], extra)


@pytest.fixture
def replicated_stack(infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicatedStack]:  # type: ignore[no-untyped-def]
    """A fresh stack per scenario: two of each service, its own database and topics."""
    database_url = asyncio.run(create_migrated_database(infra.database_url))
    run = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap_servers,
        "ORDER_EVENT_TOPIC": f"rel-{run}.order.event",
        "PAYMENT_EVENT_TOPIC": f"rel-{run}.payment.event",
        "TOPIC_PARTITIONS": "4",
        "LOG_FORMAT": "text",
        # A short safety-net poll, so work left by a killed replica is picked up quickly.
        "SAFETY_NET_POLL_S": "0.5",
    }
    stack = ReplicatedStack(env, tmp_path_factory.mktemp("reliability-logs"), replicas=2)
    try:
        stack.start_all()
        yield stack
    finally:
        stack.stop_all()
        for log in sorted(stack.logs.glob("*.log")):  # shown by pytest only when a test failed
            tail = log.read_text(errors="replace").splitlines()[-10:]
            print(f"--- {log.name}\n" + "\n".join(tail))
