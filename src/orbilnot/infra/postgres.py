"""A PostgreSQL server run from the system's server binaries (`initdb`, `pg_ctl`), for development
and tests.

Layout of `data_dir`: `data/` (the cluster, PGDATA; its server log is in `data/log/`),
`postgres.out` (what the server prints before its logging collector takes over), the unix socket,
`lock` and `passwords.json` (mode 0600: the owner role's password and each service role's,
generated once). The server asks every client for a password (scram-sha-256), over TCP and the
unix socket alike. `initdb` and `postgres` refuse to run as root, so when we are root the server
binaries run as the `postgres` system user, which then owns `data_dir`.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

from orbilnot.infra import file_lock, process_cmdline, read_pid
from orbilnot.migrations.roles import SERVICE_SCHEMAS, role_of, scram_verifier

log = logging.getLogger(__name__)

SERVER_USER = "postgres"
# A unix socket path must fit in sockaddr_un (108 bytes on Linux, 104 on BSDs).
_MAX_SOCKET_PATH = 100


def find_pg_bin() -> Path:
    """The directory of the server binaries: `$ORBILNOT_PG_BIN`, else the newest
    `/usr/lib/postgresql/<version>/bin` (Debian, Ubuntu), else wherever `pg_ctl` is on PATH."""
    override = os.environ.get("ORBILNOT_PG_BIN")
    if override:
        return Path(override)
    versions = [d for d in Path("/usr/lib/postgresql").glob("*/bin") if (d / "pg_ctl").exists()]
    if versions:
        return max(versions, key=lambda d: [int(n) for n in re.findall(r"\d+", d.parent.name)])
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return Path(pg_ctl).parent
    raise RuntimeError(
        "PostgreSQL server binaries not found: install them (Debian: apt-get install "
        "postgresql) or point ORBILNOT_PG_BIN at the directory holding initdb and pg_ctl"
    )


# Every connection authenticates with a password, whatever its user or database.
HBA = """# Written by orbilnot on every start: a password for everyone (scram-sha-256).
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 scram-sha-256
host    all       all   127.0.0.1/32  scram-sha-256
host    all       all   ::1/128       scram-sha-256
"""


class LocalPostgres:
    """One PostgreSQL cluster listening on 127.0.0.1:`port`. `user` is its superuser, the owner
    of the schemas (migrations run as it); each service has a login role of its own (`roles`)."""

    def __init__(self, data_dir: Path, port: int, user: str = "orbilnot", database: str = "orbilnot") -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.user = user
        self.database = database
        self.pgdata = self.data_dir / "data"

    @property
    def passwords_file(self) -> Path:
        return self.data_dir / "passwords.json"

    @property
    def passwords(self) -> dict[str, str]:
        """The owner's password (key: `user`) and each service's (key: the service), generated
        once, on first use, and kept with mode 0600."""
        try:
            stored: dict[str, str] = json.loads(self.passwords_file.read_text())
            return stored
        except FileNotFoundError:
            pass
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # URL-safe, so they go into a DATABASE_URL as they are.
        generated = {name: secrets.token_urlsafe(24) for name in (self.user, *SERVICE_SCHEMAS)}
        try:
            descriptor = os.open(self.passwords_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process was first: use its passwords
            return self.passwords
        with os.fdopen(descriptor, "w") as handle:
            json.dump(generated, handle)
        return generated

    @property
    def service_passwords(self) -> dict[str, str]:
        """What `orbilnot migrate` sets as the service roles' passwords, by service."""
        return {service: self.passwords[service] for service in SERVICE_SCHEMAS}

    @property
    def url(self) -> str:
        """The owner's URL: what `orbilnot migrate` uses (and tests, to create databases)."""
        return f"postgresql+asyncpg://{self.user}:{self.passwords[self.user]}@127.0.0.1:{self.port}/{self.database}"

    @property
    def display_url(self) -> str:
        """The owner's URL without its password, to print."""
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def service_url(self, service: str) -> str:
        """The URL a service connects with: its own role, its own password."""
        password = self.passwords[service]
        return f"postgresql+asyncpg://{role_of(service)}:{password}@127.0.0.1:{self.port}/{self.database}"

    @property
    def pid(self) -> int | None:
        """The pid of the running postmaster, or None."""
        pid = read_pid(self.pgdata / "postmaster.pid")
        if pid is None:
            return None
        cmdline = process_cmdline(pid)
        # postmaster.pid outlives a crash, and its pid may have been recycled since.
        if cmdline is None or not cmdline or not Path(cmdline[0]).name.startswith("postgres"):
            return None
        return pid

    def is_running(self) -> bool:
        return self.pid is not None

    def start(self, timeout_s: float = 60) -> bool:
        """Initialise the cluster if needed, start the server unless it runs already and create the
        database if it is missing; return once it accepts connections. True if this call started it."""
        self._prepare_data_dir()
        with file_lock(self.data_dir / "lock"):
            if self.is_running():
                self._check_running_port()
                return False
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb()
            self._write_config()
            trusting = self._trusts_clients()
            if not trusting:
                self._write_hba()
            log.info("PostgreSQL starting on 127.0.0.1:%d", self.port)
            self._pg_ctl("start", "-l", str(self.data_dir / "postgres.out"), timeout_s=timeout_s)
            if trusting:
                self._require_passwords()
            self._ensure_database()
        return True

    def stop(self, mode: str = "fast", timeout_s: float = 60) -> None:
        """Stop the server: "fast" rolls back open transactions and shuts down cleanly, "smart" waits
        for clients to leave, "immediate" aborts like a crash (the next start runs recovery)."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"unknown shutdown mode {mode!r}")
        if not self.data_dir.exists():
            return
        with file_lock(self.data_dir / "lock"):  # a start under way is let finish first
            if self.is_running():
                self._pg_ctl("stop", "-m", mode, timeout_s=timeout_s)

    # -- helpers --------------------------------------------------------------------------------

    def _server_user(self) -> pwd.struct_passwd | None:
        """The account the server binaries run as when we are root, else None (run as ourselves)."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(SERVER_USER)
        except KeyError:
            raise RuntimeError(
                f"running as root, PostgreSQL needs the unprivileged system user {SERVER_USER!r}, which does not exist"
            ) from None

    def _prepare_data_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        account = self._server_user()
        if account is None:
            return
        self._make_reachable(account)
        if self.data_dir.stat().st_uid != account.pw_uid:
            os.chown(self.data_dir, account.pw_uid, account.pw_gid)

    def _make_reachable(self, account: pwd.struct_passwd) -> None:
        """The server user must be able to traverse every directory above `data_dir`. Temporary
        directories are private (0700), so we open the one directly above (search permission only,
        no listing); further up we only explain, rather than loosen permissions we do not own."""
        for directory in self.data_dir.parents:
            info = directory.stat()
            if info.st_mode & stat.S_IXOTH or (info.st_uid == account.pw_uid and info.st_mode & stat.S_IXUSR):
                continue
            if directory == self.data_dir.parent:
                directory.chmod(stat.S_IMODE(info.st_mode) | stat.S_IXOTH)
                continue
            raise RuntimeError(
                f"the {SERVER_USER!r} user cannot reach {self.data_dir}: {directory} lacks o+x; "
                "put the data elsewhere or run `chmod o+x` on it"
            )

    def _server_tool(self, tool: str, *args: str, what: str) -> None:
        """Run a server binary, as the server user when we are root."""
        account = self._server_user()
        options: dict[str, Any] = {}
        if account is not None:
            options = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        command = [str(find_pg_bin() / tool), *args]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.data_dir, check=False, **options)
        if result.returncode != 0:
            raise RuntimeError(
                f"{what} failed ({tool} exited {result.returncode}):\n{result.stdout}{result.stderr}"
                f"{self._tail(self.data_dir / 'postgres.out')}"
            )

    def _check_running_port(self) -> None:
        # postmaster.pid: pid, data directory, start time, port, ... (one per line)
        lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        if len(lines) > 3 and lines[3].strip() != str(self.port):
            raise RuntimeError(
                f"PostgreSQL in {self.pgdata} already runs on port {lines[3].strip()}, not {self.port}; stop it first"
            )

    def _pg_ctl(self, action: str, *args: str, timeout_s: float) -> None:
        # -w: return only once the server accepts connections (start) or has exited (stop).
        timeout = str(max(int(timeout_s), 1))
        self._server_tool("pg_ctl", action, "-D", str(self.pgdata), *args, "-w", "-t", timeout, what=f"pg_ctl {action}")

    def _initdb(self) -> None:
        log.info("initialising a PostgreSQL cluster in %s", self.pgdata)
        # initdb reads the superuser's password from a file the server user can read: one of its
        # own, in the data directory, gone as soon as initdb is done.
        password_file = self.data_dir / "initdb-password"
        password_file.unlink(missing_ok=True)
        descriptor = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(self.passwords[self.user] + "\n")
        account = self._server_user()
        if account is not None:
            os.chown(password_file, account.pw_uid, account.pw_gid)
        # The C locale: byte-order collation, identical on every machine; text is still UTF-8.
        options = [
            "-U",
            self.user,
            "--auth=scram-sha-256",
            f"--pwfile={password_file}",
            "--encoding=UTF8",
            "--locale=C",
        ]
        try:
            self._server_tool("initdb", "-D", str(self.pgdata), *options, what="initdb")
        finally:
            password_file.unlink(missing_ok=True)
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# Settings for orbilnot's local server, rewritten on every start.\n"
                "include_if_exists = 'orbilnot.conf'\n"
            )

    def _write_config(self) -> None:
        socket_dir = str(self.data_dir)
        if len(f"{socket_dir}/.s.PGSQL.{self.port}") > _MAX_SOCKET_PATH:
            socket_dir = ""  # too deep for a unix socket: TCP only, which is all we use anyway
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": socket_dir,
            # Several services with pools, several replicas and the tests at once.
            "max_connections": "200",
            "shared_buffers": "32MB",
            "logging_collector": "on",
            "log_directory": "log",
            "log_filename": "postgresql-%a.log",  # a week of logs, each day's file reused
            "log_truncate_on_rotation": "on",
            "log_rotation_age": "1d",
            "log_rotation_size": "0",
            "log_line_prefix": "%m [%p] %q%u@%d ",
            "lc_messages": "C",
            "password_encryption": "scram-sha-256",
        }
        text = "".join(f"{key} = '{value}'\n" for key, value in settings.items())
        config = self.pgdata / "orbilnot.conf"
        config.write_text(text)
        account = self._server_user()
        if account is not None:
            os.chown(config, account.pw_uid, account.pw_gid)

    def _trusts_clients(self) -> bool:
        """A cluster made before passwords were required (initdb --auth=trust) still lets anyone in."""
        try:
            rules = (self.pgdata / "pg_hba.conf").read_text()
        except FileNotFoundError:
            return False
        return any(line.split()[-1:] == ["trust"] for line in rules.splitlines() if not line.lstrip().startswith("#"))

    def _write_hba(self) -> None:
        hba = self.pgdata / "pg_hba.conf"
        if hba.exists() and hba.read_text() == HBA:
            return
        hba.write_text(HBA)
        account = self._server_user()
        if account is not None:
            os.chown(hba, account.pw_uid, account.pw_gid)

    def _require_passwords(self) -> None:
        """Give the owner its password while the old rules still let us in, then require one."""
        log.info("PostgreSQL in %s trusted every local client: requiring passwords from now on", self.pgdata)
        verifier = scram_verifier(self.passwords[self.user])
        self._psql("postgres", f"ALTER ROLE {self.user} WITH PASSWORD '{verifier}';\n", what="setting the password")
        self._write_hba()
        self._pg_ctl("reload", timeout_s=30)

    def _client_env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": self.passwords[self.user]}

    def _psql(self, database: str, script: str, *, what: str, variables: dict[str, str] | None = None) -> str:
        # Client programs run fine as root; only the server refuses.
        command = [str(find_pg_bin() / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user]
        command += ["-d", database, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"]
        for name, value in (variables or {}).items():
            command += ["-v", f"{name}={value}"]
        done = subprocess.run(
            command, input=script, capture_output=True, text=True, check=False, env=self._client_env()
        )
        if done.returncode != 0:
            raise RuntimeError(f"{what} failed:\n{done.stderr}")
        return done.stdout

    def _ensure_database(self) -> None:
        query = "SELECT 1 FROM pg_database WHERE datname = :'db';\n"
        found = self._psql("postgres", query, what="querying PostgreSQL", variables={"db": self.database})
        if found.strip() == "1":
            return
        server = ["-h", "127.0.0.1", "-p", str(self.port), "-U", self.user]
        createdb = [str(find_pg_bin() / "createdb"), *server, self.database]
        created = subprocess.run(createdb, capture_output=True, text=True, check=False, env=self._client_env())
        if created.returncode != 0:
            raise RuntimeError(f"createdb {self.database} failed:\n{created.stderr}")

    @staticmethod
    def _tail(path: Path, lines: int = 20) -> str:
        try:
            return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
        except OSError:
            return ""
