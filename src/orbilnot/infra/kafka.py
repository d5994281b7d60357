"""A single-node Apache Kafka broker (KRaft, broker and controller in one JVM) run from jars that
Maven fetches once, for development and tests.

Layout of `data_dir`: `server.properties`, `log4j2.properties`, `kafka.pid`, `kafka.out` (the JVM's
stdout/stderr), `logs/server.log` (the broker's own log) and `kraft/` (topic data and metadata), `lock`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from orbilnot.infra import file_lock, running_pid, wait_for_exit

log = logging.getLogger(__name__)

KAFKA_MAIN = "kafka.Kafka"
_RESOURCES = resources.files("orbilnot.infra")

# A small heap is plenty for a broker that holds a few test topics. SerialGC and C1-only JIT
# cut start-up time and memory on a 2-core box; steady-state throughput is not what we need here.
JVM_OPTIONS = (
    "-Xms256m",
    "-Xmx256m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)


def ensure_kafka_jars(lib_dir: Path) -> Path:
    """Make sure `lib_dir` holds the broker's jars, fetching them with Maven if it holds none.

    Several processes may call this at once (parallel test runs, `infra up` beside `make test`):
    a file lock serialises them, and Maven fills a temporary directory that is renamed into place
    only when complete, so a half-downloaded `lib_dir` is never seen."""
    lib_dir = lib_dir.resolve()
    if _has_jars(lib_dir):
        return lib_dir
    with file_lock(lib_dir.with_name(f".{lib_dir.name}.lock")):
        if _has_jars(lib_dir):  # another process fetched them while we waited
            return lib_dir
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RuntimeError("Maven (mvn) is needed once to fetch the Kafka jars, and it is not on PATH")
        staging = Path(tempfile.mkdtemp(prefix=f".{lib_dir.name}-", dir=lib_dir.parent))
        try:
            with resources.as_file(_RESOURCES / "kafka-pom.xml") as pom:
                goal = ["dependency:copy-dependencies", f"-DoutputDirectory={staging}"]
                command = [mvn, "-q", "-B", "-f", str(pom), *goal]
                log.info("fetching the Kafka jars into %s", lib_dir)
                result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0 or not _has_jars(staging):
                raise RuntimeError(f"fetching the Kafka jars failed:\n{result.stdout}\n{result.stderr}")
            staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared
            if lib_dir.exists():
                lib_dir.rmdir()  # an empty leftover; a non-empty one without jars is an error worth seeing
            staging.rename(lib_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return lib_dir


def _has_jars(directory: Path) -> bool:
    return directory.is_dir() and any(directory.glob("*.jar"))


@dataclass(frozen=True)
class SecuredListeners:
    """Extra client listeners that demand SASL (PLAIN and SCRAM-SHA-512 both enabled), as a
    managed or secured cluster does: SASL_PLAINTEXT on `sasl_plaintext_port` and, with a PEM file
    holding the broker's private key and certificate chain, SASL_SSL on `sasl_ssl_port`."""

    users: dict[str, str] = field(default_factory=dict)  # name -> password, for both mechanisms
    sasl_plaintext_port: int | None = None
    sasl_ssl_port: int | None = None
    keystore_pem: Path | None = None

    def listeners(self) -> dict[str, tuple[str, int]]:
        """Listener name -> (security protocol, port)."""
        found = {}
        if self.sasl_plaintext_port:
            found["SASL_PLAIN"] = ("SASL_PLAINTEXT", self.sasl_plaintext_port)
        if self.sasl_ssl_port:
            found["SASL_TLS"] = ("SASL_SSL", self.sasl_ssl_port)
        return found

    def properties(self) -> dict[str, str]:
        plain_users = " ".join(f'user_{name}="{password}"' for name, password in self.users.items())
        settings = {"sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-512"}
        for name in self.listeners():
            prefix = f"listener.name.{name.lower()}"
            settings[f"{prefix}.plain.sasl.jaas.config"] = (
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};"
            )
            settings[f"{prefix}.scram-sha-512.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            )
        if self.sasl_ssl_port:
            if self.keystore_pem is None:
                raise ValueError("a SASL_SSL listener needs keystore_pem")
            settings["listener.name.sasl_tls.ssl.keystore.type"] = "PEM"
            settings["listener.name.sasl_tls.ssl.keystore.location"] = str(self.keystore_pem)
        return settings

    def scram_format_args(self) -> list[str]:
        """SCRAM credentials live in the cluster metadata; in KRaft they are added at format time."""
        args = []
        for name, password in self.users.items():
            args += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
        return args


class LocalKafka:
    """One Kafka broker listening on `host`:`port` (127.0.0.1 unless given), its KRaft controller
    on 127.0.0.1:`controller_port`, and optionally `secured` client listeners (the PLAINTEXT one
    stays for tools and probes)."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        controller_port: int,
        lib_dir: Path,
        secured: SecuredListeners | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.host = host
        self.port = port
        self.controller_port = controller_port
        self.lib_dir = lib_dir.resolve()
        self.secured = secured or SecuredListeners()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "kafka.pid"

    @property
    def log_file(self) -> Path:
        """The broker's own log (log4j2)."""
        return self.data_dir / "logs" / "server.log"

    @property
    def output_file(self) -> Path:
        """The JVM's stdout and stderr: crashes, start-up errors, SLF4J complaints."""
        return self.data_dir / "kafka.out"

    @property
    def pid(self) -> int | None:
        """The pid of our running broker, or None: only a JVM running our config is ours."""
        return running_pid(
            self.pid_file,
            self._process,
            lambda cmdline: KAFKA_MAIN in cmdline and str(self._properties_file) in cmdline,
        )

    def is_running(self) -> bool:
        return self.pid is not None

    def start(self, timeout_s: float = 90) -> bool:
        """Start the broker unless it runs already; return once a client can talk to it.
        True if this call started it."""
        deadline = time.monotonic() + timeout_s
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            if self.is_running():
                self._check_running_config()
                self._wait_until_ready(deadline)
                return False
            self._check_port_free()
            lib_dir = ensure_kafka_jars(self.lib_dir)
            self._write_config()
            self._format_storage(lib_dir)
            output_start = self._launch(lib_dir)
            try:
                self._wait_until_ready(deadline)
            except BaseException:
                self._kill_if_running()  # never leave a half-started broker behind
                raise
        self._check_logging_setup(output_start)
        return True

    def stop(self, timeout_s: float = 30) -> None:
        """Shut the broker down cleanly with SIGTERM; SIGKILL only if it does not go in time.
        A start under way (another thread or process) is let finish first."""
        if not self.data_dir.exists():
            return
        with self._lock():
            pid = self.pid
            if pid is not None and _signal(pid, signal.SIGTERM) and not self._wait_for_exit(pid, timeout_s):
                log.warning("Kafka (pid %d) did not stop within %.0f s; killing it", pid, timeout_s)
                self._kill(pid)
            self.pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would: the next start must recover its logs."""
        if not self.data_dir.exists():
            return
        with self._lock():
            self._kill_if_running()

    def _lock(self) -> AbstractContextManager[None]:
        """Serialises start, stop and kill across threads and processes."""
        return file_lock(self.data_dir / "lock")

    # -- starting -------------------------------------------------------------------------------

    @property
    def _properties_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def _kraft_dir(self) -> Path:
        return self.data_dir / "kraft"

    def _listeners(self) -> str:
        listeners = [f"PLAINTEXT://{self.host}:{self.port}", f"CONTROLLER://127.0.0.1:{self.controller_port}"]
        listeners += [f"{name}://{self.host}:{port}" for name, (_, port) in self.secured.listeners().items()]
        return ",".join(listeners)

    def _check_running_config(self) -> None:
        # server.properties is only written when the broker starts, so it is what the broker runs.
        expected = f"listeners={self._listeners()}"
        if expected not in self._properties_file.read_text().splitlines():
            raise RuntimeError(
                f"Kafka in {self.data_dir} already runs with other ports than {self.port}/{self.controller_port}; "
                "stop it first"
            )

    def _check_port_free(self) -> None:
        for port in (self.port, self.controller_port, *(port for _, port in self.secured.listeners().values())):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    raise RuntimeError(f"port {port} is taken by another process; Kafka cannot start on it")

    def _write_config(self) -> None:
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": self._listeners(),
            "advertised.listeners": ",".join(
                [f"PLAINTEXT://{self.host}:{self.port}"]
                + [f"{name}://{self.host}:{port}" for name, (_, port) in self.secured.listeners().items()]
            ),
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": ",".join(
                ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
                + [f"{name}:{protocol}" for name, (protocol, _) in self.secured.listeners().items()]
            ),
            "log.dirs": str(self._kraft_dir),
            # One broker: every replication factor and ISR minimum has to be 1.
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Internal topics default to 50 partitions each: slow to create, pointless here.
            "offsets.topic.num.partitions": "5",
            "transaction.state.log.num.partitions": "5",
            "share.coordinator.state.topic.num.partitions": "5",
            # After a crash (SIGKILL) the restarted broker is refused until the controller has
            # expired its old session: 9 s by default. Heartbeats are local, so a short one is safe.
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "3000",
            # Consumers join at once instead of after the default 3 s grace period.
            "group.initial.rebalance.delay.ms": "0",
            # Topics are created on purpose (each service creates its own at start, tests theirs),
            # never by a typo in a producer.
            "auto.create.topics.enable": "false",
            # The log cleaner's dedupe buffer is 128 MiB by default: half our heap.
            "log.cleaner.dedupe.buffer.size": str(4 * 1024 * 1024),
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
        }
        if self.secured.listeners():
            settings.update(self.secured.properties())
        text = "# Written by orbilnot.infra.kafka on every start; edits are lost.\n"
        text += "".join(f"{key}={value}\n" for key, value in settings.items())
        self._properties_file.write_text(text)
        (self.data_dir / "log4j2.properties").write_bytes((_RESOURCES / "kafka-log4j2.properties").read_bytes())

    def _java(self, lib_dir: Path, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("Java (17 or later) is needed to run Kafka, and `java` is not on PATH")
        return [
            java,
            *JVM_OPTIONS,
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.data_dir / 'logs'}",
            "-cp",
            f"{lib_dir}/*",
            *args,
        ]

    def _format_storage(self, lib_dir: Path) -> None:
        if (self._kraft_dir / "meta.properties").exists():
            return  # formatted on an earlier start; formatting again would need the same cluster id
        command = self._java(
            lib_dir,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            _new_cluster_id(),
            "-c",
            str(self._properties_file),
            "-g",
            *self.secured.scram_format_args(),
        )
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"formatting Kafka storage failed:\n{result.stdout}\n{result.stderr}")

    def _launch(self, lib_dir: Path) -> int:
        """Start the JVM; returns where its output starts in `output_file`, which keeps earlier runs'."""
        command = self._java(lib_dir, KAFKA_MAIN, str(self._properties_file))
        with self.output_file.open("ab") as output:
            output_start = output.tell()
            # A session of its own: Ctrl-C in the terminal that ran `infra up` must not reach it.
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{self._process.pid}\n")
        log.info("Kafka starting (pid %d) on %s", self._process.pid, self.bootstrap_servers)
        return output_start

    def _wait_until_ready(self, deadline: float) -> None:
        while True:
            if not self.is_running():
                raise RuntimeError(f"Kafka exited during start-up:\n{self._diagnostics()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"Kafka did not become ready on {self.bootstrap_servers}:\n{self._diagnostics()}")
            if _port_open(self.port, self.host) and _broker_answers(self.bootstrap_servers, min(remaining, 5.0)):
                return
            time.sleep(0.1)

    def _diagnostics(self) -> str:
        """What to show when the broker fails: its stdout and its log's warnings and errors, the
        last lines of each (the files may be gone with a test's temporary directory by the time
        anyone looks)."""
        parts = []
        for path, keep in ((self.output_file, lambda line: True), (self.log_file, _is_warning_or_error)):
            try:
                lines = [line for line in path.read_text(errors="replace").splitlines() if keep(line)]
            except FileNotFoundError:
                continue
            parts.append(f"--- {path} (last lines)\n" + "\n".join(lines[-15:]))
        return "\n".join(parts)

    def _check_logging_setup(self, output_start: int) -> None:
        # A missing or doubled SLF4J binding silently sends the broker's log nowhere (or twice).
        with self.output_file.open("rb") as output:
            output.seek(output_start)
            complaints = b"SLF4J:" in output.read()
        if complaints:
            log.warning("Kafka's logging is misconfigured (SLF4J warnings in %s)", self.output_file)

    # -- stopping -------------------------------------------------------------------------------

    def _wait_for_exit(self, pid: int, timeout_s: float) -> bool:
        if self._process is not None and self._process.pid == pid:
            # Our own child: wait() reaps it, so it does not linger as a zombie.
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                return False
            self._process = None
            return True
        return wait_for_exit(pid, timeout_s)

    def _kill_if_running(self) -> None:
        pid = self.pid
        if pid is not None:
            self._kill(pid)
        self.pid_file.unlink(missing_ok=True)

    def _kill(self, pid: int) -> None:
        if _signal(pid, signal.SIGKILL) and not self._wait_for_exit(pid, 10):
            raise RuntimeError(f"Kafka (pid {pid}) survived SIGKILL")


def _new_cluster_id() -> str:
    """A cluster id as Kafka's `Uuid.randomUuid()` makes them: 16 random bytes, URL-safe base64."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):  # Kafka avoids these too: they look like options
            return cluster_id


def _signal(pid: int, signum: signal.Signals) -> bool:
    """Send a signal; False if the process has gone meanwhile."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def _is_warning_or_error(line: str) -> bool:
    return " WARN " in line or " ERROR " in line or line.startswith(("\tat ", "Caused by"))


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def _broker_answers(bootstrap_servers: str, timeout_s: float) -> bool:
    """True if a real Kafka client gets cluster metadata with a broker and an active controller.

    The probe runs on an event loop of its own in a helper thread, so `start()` works the same
    whether or not its caller is inside a running event loop."""
    answer = False

    async def probe() -> None:
        nonlocal answer
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap_servers, request_timeout_ms=max(int(timeout_s * 1000), 1000)
        )
        try:
            await asyncio.wait_for(admin.start(), timeout_s)
            cluster = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
            answer = bool(cluster.get("brokers")) and cluster.get("controller_id", -1) >= 0
        except Exception as error:
            log.debug("Kafka not ready yet: %r", error)
        finally:
            await admin.close()

    thread = threading.Thread(target=asyncio.run, args=(probe(),), name="kafka-ready-probe", daemon=True)
    thread.start()
    thread.join(timeout_s + 5)
    return answer
