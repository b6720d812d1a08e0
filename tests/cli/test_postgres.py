"""The command line on PostgreSQL: store URLs in every form, ``store copy``, and a store that is not there.

Real processes, as in test_cli.py: exit statuses and stderr are what an
operator's shell sees.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fluxauth.auth.hashing import TokenHasher
from fluxauth.decision.tokens import parse_token
from fluxauth.store import open_store
from fluxauth.store.schema import VERSION
from tests.cli.test_cli import FLUXAUTH, Result, base_env, run
from tests.conftest import basic, http
from tests.support.postgres import PostgresServer, pg_rows
from tests.support.servers import ServerThread, free_port

pytestmark = pytest.mark.servers  # starts servers of its own (tests/conftest.py)

PASSWORD = "pg-secret-41d0"
TILE = "/v1/services/tiles/acme/era5/main/tiles/WebMercatorQuad/0/0/0"


def one_line_error(result: Result) -> str:
    """The one line a refused command prints: exit status 2, no traceback."""
    assert result.status == 2, result
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("fluxauth: error: ")
    assert "Traceback" not in result.stderr
    assert PASSWORD not in result.stderr + result.stdout
    return result.stderr.strip()


def test_cli_postgres_store_from_flag_env_and_config(pg_url: str, tmp_path: Path) -> None:
    """``--store``, ``FLUXAUTH_STORE`` and the config file's ``store`` all reach PostgreSQL (also as postgres://)."""
    assert run(["orgs", "create", "acme", "--store", pg_url], tmp_path).status == 0
    alias = pg_url.replace("postgresql://", "postgres://", 1)
    assert run(["compute", "enable", "acme", "tiles"], tmp_path, base_env(FLUXAUTH_STORE=alias)).status == 0
    config = tmp_path / "fluxauth.toml"
    config.write_text(f'store = "{pg_url}"\n')
    token = run(["keys", "create", "acme", "ci", "--permission", "read", "--config", str(config)], tmp_path)
    assert token.status == 0, token.stderr
    parts = parse_token(token.stdout.strip())
    assert parts is not None
    credential = open_store(pg_url).get_credential(parts.token_id)
    assert credential is not None
    assert TokenHasher("cheapest").verify(credential.token.hash, parts.secret)
    listing = run(["compute", "list", "acme", "--json", "--store", pg_url], tmp_path)
    assert '"protocol": "tiles"' in listing.stdout
    assert not list(tmp_path.glob("*.db"))  # nothing fell back to a SQLite file


def test_cli_postgres_unreachable_one_line_exit_2(tmp_path: Path) -> None:
    """A database that does not answer: one line naming host and port, never the password; exit 2."""
    port = free_port()
    url = f"postgresql://fluxauth:{PASSWORD}@127.0.0.1:{port}/fluxauth"
    line = one_line_error(run(["orgs", "create", "acme", "--store", url], tmp_path))
    assert line == f"fluxauth: error: cannot reach the store at 127.0.0.1:{port}/fluxauth: Connection refused"


@pytest.mark.parametrize("command", [["orgs", "create", "acme"], ["serve"]])
def test_cli_unknown_store_scheme_names_the_supported_ones(tmp_path: Path, command: list[str]) -> None:
    """An unknown scheme, for any command and for serve: one line naming the supported schemes, exit 2."""
    line = one_line_error(run([*command, "--store", f"mysql://root:{PASSWORD}@db/fluxauth"], tmp_path))
    assert "unsupported store URL scheme 'mysql'" in line
    assert "postgresql://" in line
    assert "sqlite:///PATH" in line


def test_cli_serve_schema_newer_than_fluxauth_exit_2(pg_url: str, tmp_path: Path) -> None:
    """``fluxauth serve`` on a store of a newer schema: one line, exit 2, no server started."""
    open_store(pg_url).close()
    pg_rows(pg_url, "UPDATE schema_version SET version = %s", (VERSION + 1,))
    line = one_line_error(run(["serve", "--port", str(free_port()), "--store", pg_url], tmp_path))
    assert f"schema version {VERSION + 1}, newer than this fluxauth's {VERSION}" in line


# -- store copy ------------------------------------------------------------------------


@pytest.fixture
def sqlite_world(tmp_path: Path) -> tuple[str, str]:
    """A SQLite store made through the CLI (org, service, a key rotated once); its path and current token."""
    path = str(tmp_path / "old.db")
    for args in (["orgs", "create", "acme"], ["compute", "enable", "acme", "tiles"]):
        assert run([*args, "--store", path], tmp_path).status == 0
    assert run(["keys", "create", "acme", "ci", "--permission", "read", "--store", path], tmp_path).status == 0
    rotated = run(["keys", "rotate", "acme", "ci", "--grace", "1h", "--store", path], tmp_path)
    assert rotated.status == 0
    return path, rotated.stdout.strip()


def test_cli_store_copy_sqlite_to_postgresql_tokens_work(
    sqlite_world: tuple[str, str], pg_url: str, tmp_path: Path, upstream: ServerThread
) -> None:
    """``store copy`` moves everything, says what; a server on the target lets the token through."""
    path, token = sqlite_world
    copied = run(["store", "copy", path, pg_url], tmp_path)
    assert copied.status == 0, copied.stderr
    where = pg_url.split("@", 1)[1].split("?", 1)[0]
    assert copied.stdout == (
        f"copied from {path!r} to {where}: orgs 1, services 1, repo settings 0, keys 1, tokens 2, changes 4,"
        " audit events 4, and the cache secret\n"  # each command's own
    )
    env = base_env(FLUXAUTH_STORE=pg_url, FLUXAUTH_UPSTREAM=upstream.url, FLUXAUTH_LOG_LEVEL="warning")
    with serving(env, tmp_path) as url:
        assert http.get(url + TILE, headers=basic("acme", token)).status_code == 200
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM tokens").fetchone() == (2,)  # the source is kept


def test_cli_store_copy_into_non_empty_target_refused(
    sqlite_world: tuple[str, str], pg_url: str, tmp_path: Path
) -> None:
    """A target that holds anything is refused in one line, exit 2, and neither store changes."""
    path, _ = sqlite_world
    assert run(["orgs", "create", "mine", "--store", pg_url], tmp_path).status == 0
    before = pg_rows(pg_url, "SELECT name FROM orgs"), pg_rows(pg_url, "SELECT COUNT(*) FROM changes")
    line = one_line_error(run(["store", "copy", path, pg_url], tmp_path))
    assert "is not empty (it has orgs): copy into an empty store" in line
    assert (pg_rows(pg_url, "SELECT name FROM orgs"), pg_rows(pg_url, "SELECT COUNT(*) FROM changes")) == before


def test_cli_store_copy_postgresql_to_sqlite(pg_url: str, tmp_path: Path) -> None:
    """Back from PostgreSQL to a new SQLite file: the numbering goes on after the copied changes."""
    for args in (["orgs", "create", "acme"], ["orgs", "create", "other"]):
        assert run([*args, "--store", pg_url], tmp_path).status == 0
    target = str(tmp_path / "back.db")
    assert run(["store", "copy", pg_url, target], tmp_path).status == 0
    assert run(["orgs", "create", "third", "--store", target], tmp_path).status == 0
    seqs = [row[0] for row in sqlite3.connect(target).execute("SELECT seq FROM changes ORDER BY seq")]
    assert seqs == [1, 2, 3]


def test_cli_store_copy_unreachable_target_one_line(sqlite_world: tuple[str, str], tmp_path: Path) -> None:
    """A target that cannot be reached: one line, exit 2; the source is untouched."""
    path, _ = sqlite_world
    url = f"postgresql://fluxauth:{PASSWORD}@127.0.0.1:{free_port()}/fluxauth"
    assert "cannot reach the store at 127.0.0.1:" in one_line_error(run(["store", "copy", path, url], tmp_path))


# -- serve before the database ---------------------------------------------------------


class serving:  # noqa: N801 - used as a context manager, like open()
    """``fluxauth serve`` in a subprocess on a free port, stopped on exit; ``stderr`` read then."""

    def __init__(self, env: dict[str, str], cwd: Path, *, ready: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [*FLUXAUTH, "serve", "--port", str(self.port)], env=env, cwd=cwd, stderr=subprocess.PIPE, text=True
        )
        self.wait_for = 200 if ready else 503
        self.stderr = ""

    def readyz(self) -> int | None:
        try:
            return http.get(self.url + "/_fluxauth/readyz", timeout=1).status_code
        except httpx.TransportError:
            return None

    def __enter__(self) -> str:
        deadline = time.monotonic() + 30
        while self.readyz() != self.wait_for:
            assert self.process.poll() is None, self.process.communicate()[1]
            assert time.monotonic() < deadline, f"readyz never answered {self.wait_for}"
            time.sleep(0.05)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.stderr = self.process.communicate(timeout=15)[1]


@pytest.fixture
def later_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server made but not started: the test starts it."""
    server = PostgresServer()
    yield server
    server.remove()


def test_cli_serve_before_the_database_unready_then_ready(
    later_server: PostgresServer, tmp_path: Path, upstream: ServerThread
) -> None:
    """Started before its database, serve says so in one line, answers 503, and is ready once the database is."""
    url = later_server.url.replace("postgres@", f"postgres:{PASSWORD}@", 1)
    env = base_env(FLUXAUTH_STORE=url, FLUXAUTH_UPSTREAM=upstream.url, FLUXAUTH_LOG_LEVEL="warning")
    server = serving(env, tmp_path, ready=False)
    with server as base:
        assert http.get(base + TILE, headers=basic("acme", "ema_0123456789abcdef_" + "x" * 40)).status_code == 503
        later_server.start()
        later_server.create_database()
        deadline = time.monotonic() + 15
        while server.readyz() != 200:
            assert time.monotonic() < deadline, "not ready after the database came up"
            time.sleep(0.1)
        for args in (["orgs", "create", "acme"], ["compute", "enable", "acme", "tiles"]):
            assert run([*args, "--store", url], tmp_path).status == 0
        token = run(["keys", "create", "acme", "ci", "--permission", "read", "--store", url], tmp_path).stdout.strip()
        assert http.get(base + TILE, headers=basic("acme", token)).status_code == 200
    lines = [line for line in server.stderr.splitlines() if "cannot reach the store" in line]
    assert len(lines) == 1, server.stderr
    assert f"cannot reach the store at 127.0.0.1:{later_server.port}/fluxauth" in lines[0]
    assert "not ready until the store answers" in lines[0]
    assert "Traceback" not in server.stderr
    assert PASSWORD not in server.stderr
