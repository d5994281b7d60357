"""Fixtures of the image test (`make image-test`, not part of `make test`): a Docker engine on this
machine, the image built from this checkout with scripts/build-image.sh, and the whole system run
as containers of it on the session's own PostgreSQL and Kafka.

Every container uses the host network and binds 127.0.0.1 (the engine runs without a bridge), runs
with `--read-only --tmpfs /tmp` as Kubernetes runs it (readOnlyRootFilesystem), and with the
image's own user. Everything started here is removed on the way out; the engine too when this
session started it. The stand-in base image and the build cache stay, so the next run is fast.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from image_support import BUILD, ENGINE, IMAGE_TAG, MEASURED, SERVICES, ContainerSystem, docker

from orbilnot.infra import free_ports
from orbilnot.migrations.roles import password_variable
from support import RunningInfra, create_database, service_database_url


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[None]:
    """A Docker engine that answers; started (and afterwards stopped) here only if none did."""
    up = subprocess.run([str(ENGINE), "up"], capture_output=True, text=True, timeout=900)
    if up.returncode != 0:
        pytest.fail(f"no Docker engine:\n{up.stderr[-3000:]}", pytrace=False)
    started_here = up.stdout.strip() == "started"
    try:
        yield
    finally:
        if started_here:
            subprocess.run([str(ENGINE), "down"], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def image(docker_engine: None) -> str:
    """The image built from this checkout, by id (another build may move the tag meanwhile)."""
    started = time.monotonic()
    build = subprocess.run([str(BUILD), IMAGE_TAG], capture_output=True, text=True, timeout=2400)
    elapsed = time.monotonic() - started
    if build.returncode != 0:
        pytest.fail(f"scripts/build-image.sh failed:\n{build.stderr[-5000:]}", pytrace=False)
    assert build.stdout.strip() == IMAGE_TAG, build.stdout
    image_id = docker("image", "inspect", "--format", "{{.Id}}", IMAGE_TAG).stdout.strip()
    size = int(docker("image", "inspect", "--format", "{{.Size}}", image_id).stdout)
    MEASURED["image build (scripts/build-image.sh, including the stand-in base if it was made)"] = f"{elapsed:.0f} s"
    MEASURED["image size"] = f"{size / 1e6:.0f} MB ({image_id[7:19]})"
    return image_id


@pytest.fixture(scope="module")
def system(image: str, infra: RunningInfra) -> Iterator[ContainerSystem]:
    """migrate, then billing, order, notification and the gateway, each a container of the image,
    on an empty database of their own and topics of their own. As compose.yaml and the chart do it:
    the migration runs as the database's owner and is given the services' passwords (it sets their
    roles); each service connects as its own role."""
    run = uuid.uuid4().hex[:8]
    database_url = asyncio.run(create_database(infra.database_url))
    common = {
        "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap_servers,
        "ORDER_EVENT_TOPIC": f"image-{run}.order.event",
        "PAYMENT_EVENT_TOPIC": f"image-{run}.payment.event",
        "LOG_FORMAT": "text",
    }
    migrate_env = {
        "DATABASE_URL": database_url,
        **{password_variable(service): password for service, password in infra.postgres.service_passwords.items()},
    }
    system = ContainerSystem(image=image, label=f"orbilnot-it-{run}", database_url=database_url)
    ports = free_ports(4)
    try:
        system.migrate(migrate_env)
        for service, port in zip(SERVICES, ports, strict=False):
            own_role = service_database_url(infra, database_url, service)
            system.serve(service, port, {**common, "DATABASE_URL": own_role})
        upstreams = {f"{service.upper()}_URL": system.urls[service] for service in SERVICES}
        system.serve("gateway", ports[3], {"LOG_FORMAT": "text", **upstreams})
        yield system
    finally:
        system.remove_all()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if MEASURED:
        terminalreporter.section("image measurements")
        for what, value in MEASURED.items():
            terminalreporter.write_line(f"{what}: {value}")
