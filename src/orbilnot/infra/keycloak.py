"""A local Keycloak (issue 9): the OpenID Connect provider for `orbilnot infra up --auth` and tests.

It comes, like the Kafka broker, from Maven Central (`org.keycloak:keycloak-quarkus-dist`, a zip
that Maven keeps in ~/.m2 and we copy once under the cache directory) and runs on the local JDK
in development mode (`kc.sh start-dev`, its data in an H2 file under `data_dir`). On start it
imports the realm `orbilnot`: the public clients `orbilnot-cli` and `orbilnot-console` (the browser
console's sign-in), whose access tokens carry the API audience `orbilnot-api`; the realm role
`orbilnot-admin`; and the demo users alice, bob and admin (the last with that role), whose
passwords are generated once and kept in `data_dir/users.json`.

Layout of `data_dir`: `keycloak-<version>/` (the unpacked distribution and its `data/`),
`users.json`, `keycloak.pid`, `keycloak.out` (its console log), `lock`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import zipfile
from contextlib import AbstractContextManager, suppress
from pathlib import Path
from typing import Any

import httpx

from orbilnot.infra import file_lock, running_pid, wait_for_exit

log = logging.getLogger(__name__)

KEYCLOAK_VERSION = "26.7.3"
KEYCLOAK_ARTIFACT = f"org.keycloak:keycloak-quarkus-dist:{KEYCLOAK_VERSION}:zip"
REALM = "orbilnot"
CLI_CLIENT = "orbilnot-cli"
# The live console in the browser (gateway/console.py): authorization code + PKCE, a public client.
CONSOLE_CLIENT = "orbilnot-console"
API_AUDIENCE = "orbilnot-api"
ADMIN_ROLE = "orbilnot-admin"
DEMO_USERS = ("alice", "bob", "admin")
# The master realm's administrator (for the admin console and REST API), not a demo user.
BOOTSTRAP_ADMIN = "keycloak-admin"

# Keycloak sizes its heap from the machine's memory; a dev realm needs little. C1-only JIT cuts
# its (long) start-up on a small, busy machine.
JAVA_OPTS_HEAP = "-Xms64m -Xmx512m"
JAVA_OPTS_APPEND = "-XX:TieredStopAtLevel=1"


def ensure_keycloak_zip(cache_dir: Path) -> Path:
    """The distribution zip under `cache_dir`, copied there by Maven (through ~/.m2) if missing.
    A file lock and a rename make concurrent callers safe, as for the Kafka jars."""
    cache_dir = cache_dir.resolve()
    target = cache_dir / f"keycloak-quarkus-dist-{KEYCLOAK_VERSION}.zip"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(cache_dir / ".keycloak-zip.lock"):
        if target.is_file():
            return target
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RuntimeError("Maven (mvn) is needed once to fetch Keycloak, and it is not on PATH")
        staging = Path(tempfile.mkdtemp(prefix=".keycloak-", dir=cache_dir))
        try:
            command = [
                mvn,
                "-q",
                "-B",
                "dependency:copy",
                f"-Dartifact={KEYCLOAK_ARTIFACT}",
                f"-DoutputDirectory={staging}",
            ]
            log.info("fetching Keycloak %s into %s", KEYCLOAK_VERSION, cache_dir)
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            fetched = staging / target.name
            if result.returncode != 0 or not fetched.is_file():
                raise RuntimeError(f"fetching Keycloak failed:\n{result.stdout}\n{result.stderr}")
            fetched.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


class LocalKeycloak:
    """One Keycloak on 127.0.0.1:`port`, with the realm `orbilnot` imported."""

    def __init__(self, data_dir: Path, port: int, zip_cache_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.zip_cache_dir = zip_cache_dir
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer_url(self) -> str:
        return f"{self.base_url}/realms/{REALM}"

    @property
    def home(self) -> Path:
        return self.data_dir / f"keycloak-{KEYCLOAK_VERSION}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "keycloak.pid"

    @property
    def output_file(self) -> Path:
        return self.data_dir / "keycloak.out"

    @property
    def users_file(self) -> Path:
        return self.data_dir / "users.json"

    @property
    def pid(self) -> int | None:
        """The pid of our running Keycloak, or None: only a process of our installation is ours."""
        return running_pid(self.pid_file, self._process, lambda cmdline: any(str(self.home) in arg for arg in cmdline))

    def is_running(self) -> bool:
        return self.pid is not None

    def passwords(self) -> dict[str, str]:
        """The demo users' passwords (and the bootstrap admin's), generated on first use."""
        if self.users_file.is_file():
            stored: dict[str, str] = json.loads(self.users_file.read_text())
            return stored
        self.data_dir.mkdir(parents=True, exist_ok=True)
        generated = {name: secrets.token_urlsafe(12) for name in (*DEMO_USERS, BOOTSTRAP_ADMIN)}
        fd = os.open(self.users_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(generated, handle, indent=2)
        return generated

    def start(self, timeout_s: float = 300) -> bool:
        """Start Keycloak unless it runs already; return once the realm answers OIDC discovery.
        True if this call started it. Keycloak needs 15 s on an idle machine and can need minutes
        on a busy one, so the wait is on its readiness, with a deadline."""
        deadline = time.monotonic() + timeout_s
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            if self.is_running():
                self._wait_until_ready(deadline)
                self._ensure_console_client()
                return False
            self._check_port_free()
            self._install()
            self._write_realm()
            self._launch()
            try:
                self._wait_until_ready(deadline)
            except BaseException:
                self._kill_if_running()
                raise
            self._ensure_console_client()
        return True

    def stop(self, timeout_s: float = 30) -> None:
        if not self.data_dir.exists():
            return
        with self._lock():
            pid = self.pid
            if pid is not None:
                _signal_group(pid, signal.SIGTERM)
                if not wait_for_exit(pid, timeout_s):
                    log.warning("Keycloak (pid %d) did not stop within %.0f s; killing it", pid, timeout_s)
                    _signal_group(pid, signal.SIGKILL)
                    wait_for_exit(pid, 10)
            if self._process is not None:
                self._process.poll()
            self.pid_file.unlink(missing_ok=True)

    def password_token(self, username: str, password: str | None = None, client_id: str = CLI_CLIENT) -> str:
        """An access token for a demo user (resource-owner password grant of the CLI client)."""
        password = password if password is not None else self.passwords()[username]
        return password_grant(self.issuer_url, client_id, username, password)

    def admin_token(self) -> str:
        """A token of the master realm's administrator, for Keycloak's admin REST API."""
        return password_grant(
            f"{self.base_url}/realms/master", "admin-cli", BOOTSTRAP_ADMIN, self.passwords()[BOOTSTRAP_ADMIN]
        )

    # -- starting -------------------------------------------------------------------------------

    def _lock(self) -> AbstractContextManager[None]:
        return file_lock(self.data_dir / "lock")

    def _check_port_free(self) -> None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                raise RuntimeError(f"port {self.port} is taken by another process; Keycloak cannot start on it")

    def _install(self) -> None:
        if (self.home / "bin" / "kc.sh").is_file():
            return
        archive = ensure_keycloak_zip(self.zip_cache_dir)
        staging = Path(tempfile.mkdtemp(prefix=".keycloak-", dir=self.data_dir))
        try:
            with zipfile.ZipFile(archive) as dist:
                dist.extractall(staging)
            unpacked = staging / self.home.name
            for script in (unpacked / "bin").glob("*.sh"):
                script.chmod(0o755)  # zipfile does not restore permissions
            unpacked.rename(self.home)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _write_realm(self) -> None:
        import_dir = self.home / "data" / "import"
        import_dir.mkdir(parents=True, exist_ok=True)
        realm_file = import_dir / f"{REALM}-realm.json"
        realm_file.write_text(json.dumps(realm_definition(self.passwords()), indent=2))
        realm_file.chmod(0o600)

    def _ensure_console_client(self) -> None:
        """A realm imported before the console existed lacks its client (--import-realm skips a
        realm that exists): add it through the admin API, once."""
        clients_url = f"{self.base_url}/admin/realms/{REALM}/clients"
        headers = {"Authorization": f"Bearer {self.admin_token()}"}
        found = httpx.get(clients_url, params={"clientId": CONSOLE_CLIENT}, headers=headers, timeout=30)
        found.raise_for_status()
        if not found.json():
            httpx.post(clients_url, json=console_client(), headers=headers, timeout=30).raise_for_status()
            log.info("Keycloak: added the client %s to the realm %s", CONSOLE_CLIENT, REALM)

    def _launch(self) -> None:
        passwords = self.passwords()
        env = {
            **os.environ,
            "KC_BOOTSTRAP_ADMIN_USERNAME": BOOTSTRAP_ADMIN,
            "KC_BOOTSTRAP_ADMIN_PASSWORD": passwords[BOOTSTRAP_ADMIN],
            "JAVA_OPTS_KC_HEAP": JAVA_OPTS_HEAP,
            "JAVA_OPTS_APPEND": JAVA_OPTS_APPEND,
        }
        command = [
            str(self.home / "bin" / "kc.sh"),
            "start-dev",
            "--http-host=127.0.0.1",
            f"--http-port={self.port}",
            # The issuer in every token, whatever Host a client used to reach Keycloak.
            f"--hostname={self.base_url}",
            "--import-realm",
        ]
        with self.output_file.open("ab") as output:
            self._process = subprocess.Popen(
                command,
                cwd=self.home,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives `orbilnot infra up`; stopped by `infra down`
            )
        self.pid_file.write_text(f"{self._process.pid}\n")
        log.info("Keycloak starting on %s (pid %d)", self.base_url, self._process.pid)

    def _wait_until_ready(self, deadline: float) -> None:
        discovery = f"{self.issuer_url}/.well-known/openid-configuration"
        while True:
            if not self.is_running():
                raise RuntimeError(f"Keycloak exited during start-up:\n{self._tail()}")
            try:
                if httpx.get(discovery, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"Keycloak did not answer {discovery} in time:\n{self._tail()}")
            time.sleep(0.5)

    def _tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.output_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no output)"

    def _kill_if_running(self) -> None:
        pid = self.pid
        if pid is not None:
            _signal_group(pid, signal.SIGKILL)
            wait_for_exit(pid, 10)
        if self._process is not None:
            self._process.poll()
        self.pid_file.unlink(missing_ok=True)


def password_grant(issuer_url: str, client_id: str, username: str, password: str) -> str:
    response = httpx.post(
        f"{issuer_url}/protocol/openid-connect/token",
        data={"grant_type": "password", "client_id": client_id, "username": username, "password": password},
        timeout=30,
    )
    if response.status_code != 200:
        raise RuntimeError(f"{issuer_url} refused a token for {username!r}: {response.status_code} {response.text}")
    token: str = response.json()["access_token"]
    return token


def _audience_mapper() -> dict[str, Any]:
    return {
        "name": f"audience {API_AUDIENCE}",
        "protocol": "openid-connect",
        "protocolMapper": "oidc-audience-mapper",
        "config": {"included.client.audience": API_AUDIENCE, "access.token.claim": "true", "id.token.claim": "false"},
    }


def console_client() -> dict[str, Any]:
    """The browser console's client: public (a page cannot keep a secret), authorization code
    with PKCE (S256) only, no password grant."""
    return {
        "clientId": CONSOLE_CLIENT,
        "name": "orbilnot console",
        "enabled": True,
        "publicClient": True,
        "standardFlowEnabled": True,
        "directAccessGrantsEnabled": False,
        # The gateway on any port of this machine: for a loopback address Keycloak ignores the
        # port (RFC 8252 §7.3), so these cover `orbilnot up`'s 8080 and the tests' free ports.
        "redirectUris": ["http://127.0.0.1/console/*", "http://localhost/console/*"],
        # The page calls the token endpoint itself, from whatever port the gateway has: CORS for any
        # origin, harmless here since a code is useless without the verifier the page holds.
        "webOrigins": ["*"],
        "attributes": {"pkce.code.challenge.method": "S256", "post.logout.redirect.uris": "+"},
        "protocolMappers": [_audience_mapper()],
    }


def realm_definition(passwords: dict[str, str]) -> dict[str, Any]:
    """The realm `orbilnot` as Keycloak imports it."""

    def user(name: str, roles: list[str]) -> dict[str, Any]:
        return {
            "username": name,
            "enabled": True,
            # Keycloak's default user profile wants these before it lets a user sign in.
            "email": f"{name}@orbilnot.example",
            "emailVerified": True,
            "firstName": name.capitalize(),
            "lastName": "Demo",
            "credentials": [{"type": "password", "value": passwords[name], "temporary": False}],
            "realmRoles": [f"default-roles-{REALM}", *roles],
        }

    return {
        "realm": REALM,
        "enabled": True,
        "accessTokenLifespan": 900,
        "roles": {"realm": [{"name": ADMIN_ROLE, "description": "May read and change every account"}]},
        "clients": [
            {
                # The API itself: nobody signs in to it; it only names the audience.
                "clientId": API_AUDIENCE,
                "name": "orbilnot API",
                "enabled": True,
                "bearerOnly": True,
            },
            {
                "clientId": CLI_CLIENT,
                "name": "orbilnot command line",
                "enabled": True,
                "publicClient": True,
                # `orbilnot token USER` and the demo sign in with a password (local demo realm only).
                "directAccessGrantsEnabled": True,
                "standardFlowEnabled": True,
                "redirectUris": ["http://127.0.0.1/*", "http://localhost/*"],
                "protocolMappers": [_audience_mapper()],
            },
            console_client(),
        ],
        "users": [user("alice", []), user("bob", []), user("admin", [ADMIN_ROLE])],
    }


def _signal_group(pid: int, signum: signal.Signals) -> None:
    # kc.sh execs the JVM, which was started in a session of its own: its group is ours alone.
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        with suppress(ProcessLookupError):
            os.kill(pid, signum)
