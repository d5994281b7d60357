"""The chart on a live single-node Kubernetes (issue 13, item 8); `make k8s-test`, not `make test`.

scripts/k8s/cluster.sh starts the cluster from nothing (and tears it down); the chart is
installed in external mode against this machine's own PostgreSQL and Kafka, reachable from the
pods on the cluster bridge's node address. The steps run in order, each checking that orders
still flow through the gateway's Service: install, `helm test`, upgrade with changed values,
rollback across a migration, uninstall and install again on the kept data, a drain under the
PodDisruptionBudgets.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from orbilnot.infra import free_ports
from orbilnot.infra.kafka import LocalKafka
from orbilnot.infra.postgres import LocalPostgres
from orbilnot.migrations.roles import SERVICE_SCHEMAS

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "scripts" / "k8s" / "cluster.sh"
NODE_IP = "10.214.0.1"
NAMESPACE = "orbilnot"
RELEASE = "orbilnot"
DATABASE = "orbilnot_k8s"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a cluster needs root")


def run(*argv: str, env: dict[str, str] | None = None, timeout: float = 600, check: bool = True) -> str:
    started = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    print(f"$ {' '.join(argv)}  ({time.monotonic() - started:.1f}s, exit {proc.returncode})")
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


@dataclass
class Cluster:
    kubeconfig: str
    helm: str
    kubectl: str
    image: str
    postgres_port: int  # on the node address, for the pods
    postgres: LocalPostgres  # on loopback, for the test's own queries
    kafka: LocalKafka
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": self.kubeconfig}

    def k(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        return run(self.kubectl, "--namespace", NAMESPACE, *args, env=self.env, check=check, timeout=timeout)

    def h(self, *args: str, timeout: float = 600) -> str:
        return run(self.helm, "--namespace", NAMESPACE, *args, env=self.env, timeout=timeout)

    def values(self, *extra: str) -> list[str]:
        repository, _, tag = self.image.rpartition(":")
        settings = [
            f"image.repository={repository}",
            f"image.tag={tag}",
            "image.pullPolicy=Never",
            "postgresql.enabled=false",
            "kafka.enabled=false",
            f"externalDatabase.host={NODE_IP}",
            f"externalDatabase.port={self.postgres_port}",
            f"externalDatabase.database={DATABASE}",
            "externalDatabase.username=orbilnot",
            "externalDatabase.existingSecret=orbilnot-db",
            f"externalKafka.bootstrapServers={self.kafka.bootstrap_servers}",
            "ingress.enabled=false",
            "config.topicPartitions=3",
            "probes.readiness.initialDelaySeconds=1",
            "probes.readiness.periodSeconds=2",
            *extra,
        ]
        return [arg for setting in settings for arg in ("--set", setting)]

    def gateway_url(self) -> str:
        service = json.loads(self.k("get", "service", f"{RELEASE}-gateway", "-o", "json"))
        return f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"

    def demo(self, what: str) -> None:
        """The acceptance scenario through the gateway's Service (from the node)."""
        out = run(sys.executable, "-m", "orbilnot.cli", "demo", "--gateway", self.gateway_url(), timeout=180)
        assert "✔" in out, f"{what}: {out}"

    def wait_for_ready_pods(self, component: str, count: int, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while (ready := self.ready_pods(component)) != count:
            assert time.monotonic() < deadline, f"{component}: {ready} pods Ready, not {count}, after {timeout_s} s"
            time.sleep(1)

    def ready_pods(self, component: str) -> int:
        pods = json.loads(self.k("get", "pods", "-l", f"app.kubernetes.io/component={component}", "-o", "json"))
        ready = 0
        for pod in pods["items"]:
            conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
            if conditions.get("Ready") == "True" and not pod["metadata"].get("deletionTimestamp"):
                ready += 1
        return ready


def database_url(postgres: LocalPostgres, name: str = DATABASE) -> str:
    """The owner's URL (asyncpg's form) of a database on the test's PostgreSQL."""
    return f"postgresql://{postgres.user}:{postgres.passwords[postgres.user]}@127.0.0.1:{postgres.port}/{name}"


async def sql(postgres: LocalPostgres, query: str) -> Any:
    conn = await asyncpg.connect(database_url(postgres))
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def cluster(kafka_lib_dir: Path) -> Iterator[Cluster]:
    cache = Path(os.environ.get("ORBILNOT_K8S_CACHE", "/var/cache/orbilnot-k8s"))
    image = (cache / "images" / "orbilnot.tag").read_text().strip()
    helm = run("bash", str(REPO / "scripts" / "ensure-helm.sh"), timeout=1800).strip().splitlines()[-1]
    root = Path(tempfile.mkdtemp(prefix="orbilnot-k8s-"))
    forwarder: subprocess.Popen[bytes] | None = None
    postgres: LocalPostgres | None = None
    kafka: LocalKafka | None = None
    started = time.monotonic()
    try:
        kubeconfig = run("bash", str(CLUSTER), "up", timeout=900).strip().splitlines()[-1]
        cluster_s = time.monotonic() - started
        pg_port, node_pg_port, kafka_port, controller_port = free_ports(4)
        postgres = LocalPostgres(root / "postgres", pg_port)
        postgres.start()
        asyncio.run(_create_database(postgres))
        # PostgreSQL listens on loopback (trust authentication for local users); the pods reach
        # it on the node address through a forwarder.
        forwarder = subprocess.Popen(
            ["socat", f"TCP-LISTEN:{node_pg_port},bind={NODE_IP},fork,reuseaddr", f"TCP:127.0.0.1:{pg_port}"]
        )
        kafka = LocalKafka(root / "kafka", kafka_port, controller_port, kafka_lib_dir, host=NODE_IP)
        kafka.start()
        result = Cluster(
            kubeconfig=kubeconfig,
            helm=helm,
            kubectl=str(cache / "bin" / "kubectl"),
            image=image,
            postgres_port=node_pg_port,
            postgres=postgres,
            kafka=kafka,
        )
        result.timings["cluster up"] = cluster_s
        result.k("create", "namespace", NAMESPACE, check=False)
        # The owner's password (the migration Job) and each service role's, as an operator's
        # existing Secret (externalDatabase.existingSecret).
        # Written to a file rather than passed as arguments, so they are not in the printed commands.
        passwords = postgres.passwords
        env_file = root / "orbilnot-db.env"
        env_file.write_text(
            f"password={passwords[postgres.user]}\n"
            + "".join(f"{service}-password={passwords[service]}\n" for service in SERVICE_SCHEMAS)
        )
        result.k("create", "secret", "generic", "orbilnot-db", f"--from-env-file={env_file}")
        yield result
        print("timings:", json.dumps({k: round(v, 1) for k, v in result.timings.items()}))
    finally:
        if forwarder is not None:
            forwarder.terminate()
            forwarder.wait(10)
        try:
            # Fails, naming what is left (processes, bridge, mounts, chains, cgroups, sysctls),
            # unless the machine is as it was.
            started = time.monotonic()
            run("bash", str(CLUSTER), "down", timeout=600)
            print(f"cluster down and verified clean in {time.monotonic() - started:.1f}s")
        finally:
            if kafka is not None:
                kafka.stop()
            if postgres is not None:
                postgres.stop()
            shutil.rmtree(root, ignore_errors=True)


async def _create_database(postgres: LocalPostgres) -> None:
    conn = await asyncpg.connect(database_url(postgres, "postgres"))
    try:
        await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()


def test_install_helm_test_and_orders(cluster: Cluster) -> None:
    started = time.monotonic()
    cluster.h(
        "install", RELEASE, str(REPO / "helm"), "--wait", "--wait-for-jobs", "--timeout", "10m", *cluster.values()
    )
    cluster.timings["helm install --wait --wait-for-jobs"] = time.monotonic() - started
    jobs = json.loads(cluster.k("get", "jobs", "-o", "json"))["items"]
    assert [job["status"].get("succeeded") for job in jobs] == [1]
    assert jobs[0]["status"].get("failed") is None, "the migration Job's first pod waited for the database"
    for component in ("billing", "order", "notification", "gateway"):
        assert cluster.ready_pods(component) == 2, component
    # The pods' checksum of the existing Secret comes from Helm's `lookup` of it in the cluster
    # (an empty lookup would give the checksum of "{}").
    deployment = json.loads(cluster.k("get", "deployment", f"{RELEASE}-billing", "-o", "json"))
    checksum = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]
    assert checksum != hashlib.sha256(b"{}").hexdigest()

    started = time.monotonic()
    out = cluster.h("test", RELEASE, "--logs", timeout=300)
    cluster.timings["helm test"] = time.monotonic() - started
    assert "Phase:          Succeeded" in out, out
    cluster.demo("after install")


def test_upgrade_with_changed_values(cluster: Cluster) -> None:
    started = time.monotonic()
    cluster.h(
        "upgrade",
        RELEASE,
        str(REPO / "helm"),
        "--wait",
        "--wait-for-jobs",
        "--timeout",
        "10m",
        *cluster.values("services.order.replicas=3", "config.logLevel=DEBUG", "services.billing.dbPoolSize=4"),
    )
    cluster.timings["helm upgrade"] = time.monotonic() - started
    assert cluster.ready_pods("order") == 3
    cluster.demo("after upgrade")


def test_rollback_across_a_migration(cluster: Cluster) -> None:
    """Upgrade to a release with one more migration, then `helm rollback`: the older image's
    migration Job and wait-for-migrations meet a revision they do not know, warn, and go on."""
    postgres = cluster.postgres
    cluster.h(
        "upgrade",
        RELEASE,
        str(REPO / "helm"),
        "--wait",
        "--wait-for-jobs",
        "--timeout",
        "10m",
        *cluster.values(f"image.tag={cluster.image.rpartition(':')[2]}-next"),
    )
    assert asyncio.run(sql(postgres, "SELECT version_num FROM alembic_version")) == "9000_next_release"
    cluster.demo("on the next release")
    revision = json.loads(cluster.h("history", RELEASE, "--output", "json"))[-2]["revision"]
    started = time.monotonic()
    cluster.h("rollback", RELEASE, str(revision), "--wait", "--wait-for-jobs", "--timeout", "10m")
    cluster.timings["helm rollback"] = time.monotonic() - started
    assert asyncio.run(sql(postgres, "SELECT version_num FROM alembic_version")) == "9000_next_release"
    (job,) = [j for j in json.loads(cluster.k("get", "jobs", "-o", "json"))["items"]]
    logs = cluster.k("logs", f"job/{job['metadata']['name']}")
    assert "newer than this release" in logs, logs
    cluster.demo("after rollback")


def test_uninstall_and_install_again_on_the_kept_data(cluster: Cluster) -> None:
    postgres = cluster.postgres
    orders_before = asyncio.run(sql(postgres, "SELECT count(*) FROM order_service.orders"))
    assert orders_before > 0
    started = time.monotonic()
    cluster.h("uninstall", RELEASE, "--wait", timeout=300)
    assert json.loads(cluster.k("get", "deployments,jobs", "-o", "json"))["items"] == []
    cluster.h(
        "install", RELEASE, str(REPO / "helm"), "--wait", "--wait-for-jobs", "--timeout", "10m", *cluster.values()
    )
    cluster.timings["helm uninstall, install again"] = time.monotonic() - started
    for component in ("billing", "order", "notification", "gateway"):
        assert cluster.ready_pods(component) == 2, component
    cluster.demo("after reinstall")
    assert asyncio.run(sql(postgres, "SELECT count(*) FROM order_service.orders")) > orders_before


def test_a_drain_keeps_every_component_serving(cluster: Cluster) -> None:
    """One node: a drain can evict one pod of each component (maxUnavailable 1), then the PDBs
    hold the rest, and orders still flow through the survivors."""
    started = time.monotonic()
    proc = subprocess.run(
        [cluster.kubectl, "drain", "orbk8s", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=60s"],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    print(proc.stdout, proc.stderr)
    try:
        assert proc.returncode != 0, "a drain of the only node cannot complete under the budgets"
        assert "disruption budget" in (proc.stdout + proc.stderr)
        # Exactly one pod of each was evicted; its replacement waits for a schedulable node.
        for component in ("billing", "order", "notification", "gateway"):
            assert cluster.ready_pods(component) == 1, component
        cluster.demo("during the drain")
    finally:
        run(cluster.kubectl, "uncordon", "orbk8s", env=cluster.env, check=False)
    # Uncordoned, the replacements start and the release is whole again.
    for component in ("billing", "order", "notification", "gateway"):
        cluster.wait_for_ready_pods(component, 2)
    cluster.timings["drain, uncordon, whole again"] = time.monotonic() - started
    cluster.demo("after the drain")
