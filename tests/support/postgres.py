"""PostgreSQL for tests: a database of the session's own on the machine's server, and servers of a test's own.

The session creates one database with a unique name on the PostgreSQL at
``FLUXAUTH_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``,
trust authentication) and drops it at the end; each test that asks for
``pg_url`` gets a schema of its own in it (through ``search_path``), so tests
never see each other's rows. Fault tests start a server of their own with
``initdb`` and ``pg_ctl`` (``PostgresServer``), to stop and restart it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from tests.support.servers import free_port

ADMIN_URL = os.environ.get("FLUXAUTH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
BIN = Path(os.environ.get("FLUXAUTH_TEST_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
_schemas = itertools.count(1)


def with_search_path(url: str, schema: str) -> str:
    """``url`` with its tables in ``schema`` (libpq's ``options=-csearch_path=...``)."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={quote('-csearch_path=' + schema)}"


def database_url(admin_url: str, name: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The URL of a database of this test session's own, dropped at its end."""
    name = f"fluxauth_test_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url(ADMIN_URL, name)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def new_schema(database: str) -> str:
    schema = f"t{next(_schemas)}"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return with_search_path(database, schema)


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """A PostgreSQL store URL whose tables no other test sees (a schema of the test's own)."""
    return new_schema(pg_database)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty store's URL, once for each database: tests that take it run on both."""
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    url: str = request.getfixturevalue("pg_url")
    return url


def pg_rows(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` (none for statements without) over a connection of its own, as another process sees them."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return [tuple(row) for row in cursor.fetchall()] if cursor.description else []


def _as_postgres() -> list[str]:
    """The command prefix that runs PostgreSQL's tools as a user they accept (never root)."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class PostgresServer:
    """A PostgreSQL server of a test's own on a free port, to stop, restart and cut off."""

    def __init__(self) -> None:
        self.port = free_port()
        # Under /tmp, owned by the user the server runs as: pytest's tmp_path is
        # private to root, which PostgreSQL refuses to run as.
        self.directory = Path(tempfile.mkdtemp(prefix="fluxauth-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/fluxauth"
        self._run(
            str(BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"
        )

    def _run(self, *command: str) -> None:
        done = subprocess.run([*_as_postgres(), *command], capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"{command[0]} failed: {done.stdout}{done.stderr}"

    def start(self) -> PostgresServer:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.directory}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
        )
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        return self

    def running(self) -> bool:
        try:
            psycopg.connect(self.admin_url, connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def stop(self, mode: str = "fast") -> None:
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def create_database(self, name: str = "fluxauth") -> str:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return database_url(self.admin_url, name)

    def terminate_sessions(self, database: str = "fluxauth") -> int:
        """``pg_terminate_backend`` on every session of ``database``: how many there were."""
        rows = pg_rows(
            self.admin_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )
        return len(rows)

    def sessions(self, database: str = "fluxauth", application: str | None = None) -> int:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
        params: tuple[Any, ...] = (database,)
        if application is not None:
            query += " AND application_name = %s"
            params += (application,)
        return int(pg_rows(self.admin_url, query, params)[0][0])

    def wait_sessions(self, count: int, *, database: str = "fluxauth", application: str) -> None:
        """Wait (bounded) until ``database`` has ``count`` sessions of ``application``."""
        deadline = time.monotonic() + 10
        while self.sessions(database, application) < count:
            assert time.monotonic() < deadline, f"fewer than {count} sessions of {application}"
            time.sleep(0.02)

    def remove(self) -> None:
        with contextlib.suppress(AssertionError):  # not running
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the module's own, with an empty database ``fluxauth``; tests leave it running."""
    server = PostgresServer().start()
    server.create_database()
    yield server
    server.remove()
