"""A throwaway PostgreSQL cluster on loopback, in its own temp dir, for tests and benchmarks."""

from __future__ import annotations

import logging
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

from demo.errors import DemoError

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
PACKAGE = "postgresql"
SERVER_USER = "postgres"
SEARCH_ROOT = Path("/usr/lib/postgresql")
# The server cannot bind: another process took the port between our check and its start.
_PORT_TAKEN = ("could not bind", "could not create any TCP/IP sockets")
# Trust only our own socket and loopback; initdb's default also trusts ::1 and replication.
_PG_HBA = f"local all all trust\nhost all all {LOOPBACK}/32 trust\n"


class PostgresNotFoundError(DemoError, FileNotFoundError):
    """PostgreSQL's server binaries or its system user are not on this machine."""


class PostgresError(DemoError, RuntimeError):
    """The throwaway cluster failed to initialise, start, stop or run a command."""


def find_postgres_bin_dir(
    *, pg_config: str | None = "pg_config", search_root: Path = SEARCH_ROOT
) -> Path:
    """Return the dir holding initdb: `pg_config --bindir`, else the newest `search_root/*/bin`."""
    candidates: list[Path] = []
    found = shutil.which(pg_config) if pg_config else None
    if found:
        try:
            out = subprocess.run(
                [found, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError) as exc:
            logger.warning("pg_config --bindir failed: %s", exc)
        else:
            candidates.append(Path(out.stdout.strip()))
    versions = [p for p in search_root.glob("*/bin") if p.parent.name.isdigit()]
    candidates += sorted(versions, key=lambda p: int(p.parent.name), reverse=True)
    for bin_dir in candidates:
        # libpq-dev's pg_config may name a client-only version; the server must be there.
        if all(os.access(bin_dir / tool, os.X_OK) for tool in ("initdb", "pg_ctl")):
            return bin_dir
    looked = ", ".join(str(c) for c in candidates) or f"nothing under {search_root}"
    raise PostgresNotFoundError(
        f"no PostgreSQL server binaries (initdb, pg_ctl) found (looked at {looked}); "
        f"install the `{PACKAGE}` package (scripts/setup does)"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PostgresCluster:
    """A PostgreSQL server in a temp dir on 127.0.0.1; use as `with PostgresCluster() as pg:`."""

    def __init__(
        self,
        *,
        bin_dir: str | os.PathLike[str] | None = None,
        superuser: str = "postgres",
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        command_timeout: float = 30.0,
        port_attempts: int = 5,
    ) -> None:
        self._bin_dir_arg = None if bin_dir is None else Path(bin_dir)
        self.superuser = superuser
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._command_timeout = command_timeout
        self._port_attempts = max(1, port_attempts)
        self.host = LOOPBACK
        self.port = 0
        self.bin_dir: Path | None = None
        self.directory: Path | None = None
        self._running = False

    def _dir(self) -> Path:
        if self.directory is None:
            raise PostgresError("PostgreSQL cluster is not started")
        return self.directory

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (owned by the server's user)."""
        return self._dir() / "data"

    @property
    def socket_dir(self) -> Path:
        """The directory holding the server's unix socket."""
        return self._dir() / "socket"

    @property
    def log_path(self) -> Path:
        """The server log."""
        return self._dir() / "postgres.log"

    def dsn(self, dbname: str = "postgres") -> str:
        """Return a libpq URL for `dbname` as the superuser over TCP on loopback."""
        if not self._running:
            raise PostgresError("PostgreSQL cluster is not running")
        user, db = quote(self.superuser, safe=""), quote(dbname, safe="")
        return f"postgresql://{user}@{self.host}:{self.port}/{db}"

    def log_tail(self, lines: int = 40) -> str:
        """Return the last `lines` lines of the server log."""
        if self.directory is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def start(self) -> None:
        """Create the cluster in a fresh temp dir and start it on a free loopback port."""
        if self.directory is not None:
            raise PostgresError("PostgreSQL cluster already started")
        self.bin_dir = self._bin_dir_arg or find_postgres_bin_dir()
        owner = self._server_owner()
        self.directory = Path(tempfile.mkdtemp(prefix="postgres-"))
        try:
            self.socket_dir.mkdir(mode=0o700)
            self.log_path.touch(mode=0o600)
            if owner is not None:
                for path in (self.directory, self.socket_dir, self.log_path):
                    os.chown(path, owner.pw_uid, owner.pw_gid)
            self._initdb()
            self._start_server()
        except BaseException:
            self.stop()
            raise

    def _server_owner(self) -> pwd.struct_passwd | None:
        """Return the user to run the server as: `postgres` under root, else None (ourselves)."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(SERVER_USER)
        except KeyError as exc:
            raise PostgresNotFoundError(
                f"no `{SERVER_USER}` system user to run PostgreSQL as (initdb refuses root); "
                f"install the `{PACKAGE}` package, which creates it"
            ) from exc

    def _initdb(self) -> None:
        self._run_server_tool(
            "initdb",
            "--no-sync",
            "--no-instructions",
            "--auth=trust",
            f"--username={self.superuser}",
            "--encoding=UTF8",
            "--locale=C",
            f"--pgdata={self.data_dir}",
            timeout=self._command_timeout,
        )
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(_PG_HBA)

    def _start_server(self) -> None:
        for attempt in range(1, self._port_attempts + 1):
            self.port = _free_port()
            log_start = self.log_path.stat().st_size
            # pg_ctl starts the server through /bin/sh, hence the quoted path.
            sockdir = shlex.quote(str(self.socket_dir))
            options = (
                f"-c listen_addresses={LOOPBACK} -p {self.port} -k {sockdir} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            try:
                self._run_server_tool(
                    "pg_ctl",
                    "start",
                    "-w",
                    f"--timeout={max(1, round(self._startup_timeout))}",
                    f"--pgdata={self.data_dir}",
                    f"--log={self.log_path}",
                    f"--options={options}",
                    timeout=self._startup_timeout + 5.0,
                )
            except PostgresError:
                with self.log_path.open("rb") as log:
                    log.seek(log_start)
                    attempt_log = log.read().decode(errors="replace")
                if attempt < self._port_attempts and any(m in attempt_log for m in _PORT_TAKEN):
                    logger.info("PostgreSQL port taken; retrying", extra={"port": self.port})
                    continue
                raise
            self._running = True
            logger.info(
                "PostgreSQL cluster started",
                extra={"port": self.port, "pgdata": str(self.data_dir)},
            )
            return

    def stop(self) -> None:
        """Stop the server (fast shutdown, immediate if that fails) and remove the temp dir."""
        directory = self.directory
        if directory is None:
            return
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self._stop_server()
        except BaseException:
            self._forget()
            # The stop failure is the error to report; leftovers of a live server may not go.
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self._forget()
        shutil.rmtree(directory)
        logger.info("PostgreSQL cluster stopped and removed", extra={"port": self.port})

    def _forget(self) -> None:
        self._running = False
        self.directory = None

    def _stop_server(self) -> None:
        for mode in ("fast", "immediate"):
            try:
                self._run_server_tool(
                    "pg_ctl",
                    "stop",
                    "-w",
                    f"--mode={mode}",
                    f"--timeout={max(1, round(self._stop_timeout))}",
                    f"--pgdata={self.data_dir}",
                    timeout=self._stop_timeout + 5.0,
                )
            except PostgresError:
                logger.warning("pg_ctl stop failed", extra={"mode": mode}, exc_info=True)
                continue
            return
        raise PostgresError(f"PostgreSQL on port {self.port} did not stop")

    def create_database(self, name: str) -> None:
        """Create database `name`, owned by the superuser."""
        self._psql(f"CREATE DATABASE {_quote_ident(name)}")

    def drop_database(self, name: str) -> None:
        """Drop database `name` if it exists, terminating its connections first."""
        self._psql(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")

    def _psql(self, sql: str) -> None:
        if not self._running or self.bin_dir is None:
            raise PostgresError("PostgreSQL cluster is not running")
        self._run(
            [
                str(self.bin_dir / "psql"),
                "--no-psqlrc",
                "--quiet",
                "--set=ON_ERROR_STOP=1",
                f"--dbname={self.dsn('postgres')}",
                f"--command={sql}",
            ],
            timeout=self._command_timeout,
        )

    def _run_server_tool(self, tool: str, *args: str, timeout: float) -> None:
        """Run a server binary as the server's user (the `postgres` user when we are root)."""
        assert self.bin_dir is not None and self.directory is not None
        owner = self._server_owner()
        self._run([str(self.bin_dir / tool), *args], timeout=timeout, owner=owner)

    def _run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        owner: pwd.struct_passwd | None = None,
    ) -> None:
        # PG* variables (PGHOST, PGPORT, PGDATA...) would redirect the tools elsewhere.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        if owner is not None:
            env.update(HOME=owner.pw_dir, USER=owner.pw_name, LOGNAME=owner.pw_name)
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=env,
                cwd=self.directory,
                timeout=timeout,
                start_new_session=True,
                check=False,
                # user= alone would keep root's supplementary groups.
                user=None if owner is None else owner.pw_uid,
                group=None if owner is None else owner.pw_gid,
                extra_groups=None if owner is None else [],
            )
        except subprocess.TimeoutExpired as exc:
            raise PostgresError(
                f"{Path(argv[0]).name} {argv[1] if len(argv) > 1 else ''} did not finish "
                f"within {timeout:.0f} s; log tail:\n{self.log_tail()}"
            ) from exc
        except OSError as exc:
            raise PostgresError(f"could not run {argv[0]}: {exc}") from exc
        if proc.returncode != 0:
            raise PostgresError(
                f"{Path(argv[0]).name} exited with status {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()}\nlog tail:\n{self.log_tail()}"
            )

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
