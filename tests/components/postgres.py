"""A throwaway PostgreSQL server: ``initdb`` + ``pg_ctl`` in a temp dir on a free loopback port.

One server per test session, started on first use (~1 s) and stopped at the session's end; each
test that wants a database gets its own (``create_database``), dropped afterwards. Debian's
binaries live in ``/usr/lib/postgresql/<version>/bin`` (``apt-get install postgresql``); without
them, or without psycopg, the ``postgres_server`` fixture skips, saying which is missing.

``initdb`` refuses to run as root, so as root the server runs as the ``postgres`` user, in a
``/tmp`` directory handed to it (pytest's ``tmp_path`` is 0700 and out of its reach).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

USER = "test"


def find_bindir() -> Path | None:
    """The newest Debian PostgreSQL bin dir, else the one holding ``pg_ctl`` on PATH."""
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda bindir: int(bindir.parent.name) if bindir.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1]
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl and (Path(pg_ctl).parent / "initdb").exists() else None


def unavailable() -> str | None:
    """Why no server can be started here; None if one can."""
    if find_bindir() is None:
        return (
            "PostgreSQL binaries not found (no /usr/lib/postgresql/*/bin/initdb): "
            "apt-get install -y postgresql"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed: pip install 'psycopg[binary]' (cogserve's postgres extra)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root, and runuser (to run PostgreSQL as another user) is missing"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root: Path | None = None
        self.port = 0

    # -- life cycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cogserve-pg-", dir="/tmp"))
        if os.geteuid() == 0:
            shutil.chown(self.root, user="postgres")
        data = self.root / "data"
        self._run("initdb", "-D", str(data), "-A", "trust", "-U", USER, "-N", "-E", "UTF8", "--no-locale")
        last_error = ""
        for _ in range(5):  # another process may take the free port between our look and the bind
            self.port = _free_port()
            started = self._pg_ctl_start(check=False)
            if started.returncode == 0:
                atexit.register(self.stop)
                return
            last_error = started.stdout + started.stderr + self._log_tail()
        self.stop()
        raise RuntimeError(f"PostgreSQL did not start: {last_error}")

    def stop(self) -> None:
        if self.root is None:
            return
        root, self.root = self.root, None
        if (root / "data" / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(root / "data"), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)

    def pause(self) -> None:
        """Stop the server as a crash would (immediate), keeping its data: the database is "down".

        A checkpoint first: the server runs with ``synchronous_commit=off`` (for speed), so its last
        commits may still sit in WAL buffers, which an immediate stop throws away (a loaded run
        lost a test's freshly migrated tables that way). A real server commits synchronously and
        keeps them.
        """
        assert self.root is not None
        self._admin("CHECKPOINT")
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")

    def resume(self) -> None:
        """Start a paused server again, on the same port: the database "returns"."""
        self._pg_ctl_start(check=True)

    def _pg_ctl_start(self, *, check: bool) -> subprocess.CompletedProcess[str]:
        assert self.root is not None
        options = (
            f"-k {self.root} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        data, log = str(self.root / "data"), str(self.root / "log")
        return self._run(
            "pg_ctl", "-D", data, "-l", log, "-w", "-t", "30", "-o", options, "start", check=check
        )  # fmt: skip

    # -- databases ---------------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of a database on this server."""
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> tuple[str, str]:
        """A new empty database: (name, SQLAlchemy URL)."""
        name = "t_" + secrets.token_hex(6)
        self._admin(f'CREATE DATABASE "{name}"')
        return name, self.url(name)

    def drop_database(self, name: str) -> None:
        # FORCE: a connection a test left open must not keep the database (or the test) alive.
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A fresh database's URL for the duration of a ``with`` block."""
        name, url = self.create_database()
        try:
            yield url
        finally:
            self.drop_database(name)

    # -- internals ---------------------------------------------------------------------------------

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=USER, dbname="postgres", autocommit=True
        ) as connection:
            connection.execute(sql.encode())

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(
            command, capture_output=True, text=True, cwd=self.root or "/tmp", timeout=60, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stdout}{result.stderr}")
        return result

    def _log_tail(self) -> str:
        log = (self.root / "log") if self.root else None
        return log.read_text(errors="replace")[-2000:] if log and log.exists() else ""


_server: PostgresServer | None = None


def shared_server() -> PostgresServer:
    """The session's server, started on first call; skips the calling test if none can start."""
    global _server
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    if _server is None:
        bindir = find_bindir()
        assert bindir is not None
        server = PostgresServer(bindir)
        server.start()
        _server = server
    return _server


def stop_shared_server() -> None:
    global _server
    if _server is not None:
        _server.stop()
        _server = None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session-wide PostgreSQL server (import this fixture into a conftest or test module)."""
    yield shared_server()
    stop_shared_server()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped after the test."""
    with postgres_server.database() as url:
        yield url
