"""A PostgreSQL server run from the system's server binaries (`initdb`, `pg_ctl`), for development
and tests.

Layout of `data_dir`: `data/` (the cluster, PGDATA; its server log is in `data/log/`),
`postgres.out` (what the server prints before its logging collector takes over), the unix socket
and `lock`. `initdb` and `postgres` refuse to run as root, so when we are root the server
binaries run as the `postgres` system user, which then owns `data_dir`.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

from orbilnot.infra import file_lock, process_cmdline, read_pid

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


class LocalPostgres:
    """One PostgreSQL cluster listening on 127.0.0.1:`port`, with trust authentication for `user`."""

    def __init__(self, data_dir: Path, port: int, user: str = "orbilnot", database: str = "orbilnot") -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.user = user
        self.database = database
        self.pgdata = self.data_dir / "data"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{self.database}"

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
            log.info("PostgreSQL starting on 127.0.0.1:%d", self.port)
            self._pg_ctl("start", "-l", str(self.data_dir / "postgres.out"), timeout_s=timeout_s)
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
        # The C locale: byte-order collation, identical on every machine; text is still UTF-8.
        options = ["-U", self.user, "--auth=trust", "--encoding=UTF8", "--locale=C"]
        self._server_tool("initdb", "-D", str(self.pgdata), *options, what="initdb")
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
        }
        text = "".join(f"{key} = '{value}'\n" for key, value in settings.items())
        config = self.pgdata / "orbilnot.conf"
        config.write_text(text)
        account = self._server_user()
        if account is not None:
            os.chown(config, account.pw_uid, account.pw_gid)

    def _ensure_database(self) -> None:
        # Client programs run fine as root; only the server refuses.
        bin_dir = find_pg_bin()
        server = ["-h", "127.0.0.1", "-p", str(self.port), "-U", self.user]
        psql = [str(bin_dir / "psql"), *server, "-d", "postgres", "-X", "-q", "-At", "-v", f"db={self.database}"]
        query = "SELECT 1 FROM pg_database WHERE datname = :'db';\n"
        found = subprocess.run(psql, input=query, capture_output=True, text=True, check=False)
        if found.returncode != 0:
            raise RuntimeError(f"querying PostgreSQL failed:\n{found.stderr}")
        if found.stdout.strip() == "1":
            return
        createdb = [str(bin_dir / "createdb"), *server, self.database]
        created = subprocess.run(createdb, capture_output=True, text=True, check=False)
        if created.returncode != 0:
            raise RuntimeError(f"createdb {self.database} failed:\n{created.stderr}")

    @staticmethod
    def _tail(path: Path, lines: int = 20) -> str:
        try:
            return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
        except OSError:
            return ""
