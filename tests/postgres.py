"""A real PostgreSQL server for tests: Debian's ``postgresql`` binaries (``initdb`` and
``postgres`` under /usr/lib/postgresql/N/bin) run in a temporary directory, on a free
127.0.0.1 port, as an unprivileged user (``nobody`` when the tests run as root: PostgreSQL
refuses root). Password authentication over TCP (scram-sha-256), as a production server has.

``pg_server`` is session-scoped (one server for the run, ~1 s to start); ``pg_database`` gives
each test a fresh database. Without PostgreSQL the tests that need it are skipped, naming the
package to install (``.ci/system-deps`` installs it).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ports import free_port

USER = "healer"
PASSWORD = "test-password"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def postgres_bindir() -> Path | None:
    """The newest Debian PostgreSQL bin directory holding initdb and postgres, if any."""
    found = []
    for d in Path("/usr/lib/postgresql").glob("*/bin"):
        if (d / "initdb").is_file() and (d / "postgres").is_file() and d.parent.name.isdigit():
            found.append((int(d.parent.name), d))
    return max(found)[1] if found else None


@dataclass(frozen=True)
class RunAs:
    """Who runs the server: the current user, or ``nobody`` when that is root."""

    uid: int | None
    gid: int | None

    @classmethod
    def pick(cls) -> RunAs:
        if os.geteuid() != 0:
            return cls(None, None)
        nobody = pwd.getpwnam("nobody")
        return cls(nobody.pw_uid, nobody.pw_gid)

    def chown(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)


class PostgresServer:
    """One ``postgres`` process in its own directory; :meth:`stop` kills it and removes it."""

    def __init__(self, bindir: Path, *, fsync: bool = False) -> None:
        self.bindir = bindir
        self.run_as = RunAs.pick()
        # Not under pytest's 0700 tmp dirs: the server's user must reach its directory.
        self.root = Path(tempfile.mkdtemp(prefix="healer-pg-"))
        self.root.chmod(0o755)
        self.run_as.chown(self.root)
        self.data = self.root / "data"
        self.port = free_port()
        self.fsync = fsync
        self.proc: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)

    def _run(self, *args: str) -> None:
        subprocess.run(
            args,
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT,
            user=self.run_as.uid,
            group=self.run_as.gid,
            cwd=self.root,
        )

    def start(self) -> PostgresServer:
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        self.run_as.chown(pwfile)
        self._run(
            str(self.bindir / "initdb"),
            "-D", str(self.data), "-U", USER, "--pwfile", str(pwfile), "-E", "UTF8",
            "--locale=C", "--auth-host=scram-sha-256", "--auth-local=trust", "--no-sync",
        )  # fmt: skip
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "fsync": "on" if self.fsync else "off",
            "synchronous_commit": "on" if self.fsync else "off",
            "full_page_writes": "on" if self.fsync else "off",
            "max_connections": "200",
            "shared_buffers": "32MB",
        }
        args = [str(self.bindir / "postgres"), "-D", str(self.data)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=(self.root / "postgres.log").open("wb"),
            user=self.run_as.uid,
            group=self.run_as.gid,
            cwd=self.root,
            start_new_session=True,
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log()[-2000:]}")
            try:
                psycopg.connect(self.url("postgres"), password=PASSWORD, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not start: {self.log()[-2000:]}") from None
                time.sleep(0.05)

    def log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def url(self, database: str) -> str:
        """A URL without the password, as a healer config holds it."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "t") -> str:
        import psycopg

        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url("postgres"), password=PASSWORD, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY FILE_COPY')
        return name

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), password=PASSWORD, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # SIGQUIT: immediate shutdown (the data is thrown away below).
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        shutil.rmtree(self.root, ignore_errors=True)


def psycopg_missing() -> str | None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    return None


def skip_reason() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None."""
    if postgres_bindir() is None:
        return (
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
            "apt-get install postgresql (or run .ci/system-deps)"
        )
    return psycopg_missing()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    bindir = postgres_bindir()
    assert bindir is not None
    server = PostgresServer(bindir)
    try:
        yield server.start()
    finally:
        server.stop()


@dataclass(frozen=True)
class PgDatabase:
    server: PostgresServer
    name: str

    @property
    def url(self) -> str:
        return self.server.url(self.name)

    @property
    def password(self) -> str:
        return PASSWORD


@pytest.fixture
def pg_database(pg_server: PostgresServer) -> Iterator[PgDatabase]:
    """A fresh, empty database on the session's server, dropped after the test."""
    name = pg_server.create_database()
    try:
        yield PgDatabase(pg_server, name)
    finally:
        with contextlib.suppress(Exception):
            pg_server.drop_database(name)
