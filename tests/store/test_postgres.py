"""Tests of what is PostgreSQL's own: the pool and its bounds, sessions cut or a server stopped, LISTEN/NOTIFY.

Faults are made on a server of the module's own (``pg_server``), which the
tests stop, start and cut off with ``pg_terminate_backend``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from fluxauth.errors import Conflict, StoreUnavailable
from fluxauth.store import open_store
from fluxauth.store.postgres import WRITE_LOCK, PostgresStore, reason
from tests.store.test_store import NOW, key_record
from tests.support.postgres import PostgresServer, new_schema
from tests.support.servers import free_port

pytestmark = pytest.mark.servers  # starts servers of its own (tests/conftest.py)

PASSWORD = "pg-secret-2b9f"


@pytest.fixture
def fault_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh schema on the module's own server, its URL carrying a password (which trust ignores)."""
    url = new_schema(pg_server.url).replace("postgres@", f"postgres:{PASSWORD}@", 1)
    yield url
    if not pg_server.running():
        pg_server.start()


def test_unreachable_at_open_one_line_naming_host_and_port() -> None:
    """A server that is not there: StoreUnavailable at once, one line with host and port, no password."""
    port = free_port()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as refused:
        open_store(f"postgresql://fluxauth:{PASSWORD}@127.0.0.1:{port}/fluxauth")
    message = str(refused.value)
    assert time.monotonic() - started < 2
    assert message == f"cannot reach the store at 127.0.0.1:{port}/fluxauth: Connection refused"
    assert PASSWORD not in repr(refused.value)
    assert refused.value.__cause__ is None  # psycopg's error (which names the server again) is not chained


def test_missing_database_named(pg_database: str) -> None:
    """A database that does not exist is named in the one line (fluxauth creates tables, not databases)."""
    url = pg_database.rpartition("/")[0] + "/fluxauth_no_such_database"
    with pytest.raises(StoreUnavailable, match='database "fluxauth_no_such_database" does not exist'):
        open_store(url)


def test_reason_strips_libpq_framing_and_passwords() -> None:
    """``reason`` keeps the cause, not libpq's restatement of the server or its hints."""
    exc = psycopg.OperationalError(
        'connection failed: connection to server at "10.0.0.1", port 5432 failed: FATAL:  password authentication'
        f' failed for user "x" ({PASSWORD})\nsecond line'
    )
    assert reason(exc, PASSWORD) == 'password authentication failed for user "x" (***)'


def test_sessions_terminated_store_reconnects_by_itself(pg_server: PostgresServer, fault_url: str) -> None:
    """After ``pg_terminate_backend`` of every session, the next reads and writes succeed on new connections."""
    store = open_store(fault_url, pool_size=3)
    store.create_org("acme", NOW)
    store.create_key(key_record(), "t1", "hash-1", NOW)
    threads = [threading.Thread(target=store.get_credential, args=("t1",)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert pg_server.terminate_sessions() >= 1
    credential = store.get_credential("t1")  # a single-statement read
    assert credential is not None
    assert store.get_key("acme", "ci").name == "ci"  # a snapshot read
    assert pg_server.terminate_sessions() >= 1
    store.delete_key("acme", "ci", NOW)  # a write
    assert store.get_credential("t1") is None
    store.close()


def test_server_stopped_unavailable_then_recovers(
    pg_server: PostgresServer, fault_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A stopped server: every call raises StoreUnavailable at once, in one line; once it is back, calls succeed."""
    store = open_store(fault_url, timeout=1.0)
    store.create_org("acme", NOW)
    pg_server.stop()
    for call in (lambda: store.org_exists("acme"), lambda: store.create_org("other", NOW), store.ping):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as refused:
            call()
        assert time.monotonic() - started < 1.5
        assert "\n" not in str(refused.value)
        assert PASSWORD not in str(refused.value)
        assert f"127.0.0.1:{pg_server.port}" in str(refused.value)
    pg_server.start()
    assert store.org_exists("acme")
    store.create_org("other", NOW)
    assert store.org_exists("other")
    assert PASSWORD not in caplog.text
    store.close()


def test_pool_bounded_wait_times_out(fault_url: str) -> None:
    """With every connection of the pool in use, a call fails after the timeout, then works once one is back."""
    store = open_store(fault_url, pool_size=1, timeout=0.5)
    assert isinstance(store, PostgresStore)
    store.create_org("acme", NOW)
    with store._backend._pool.lease():  # type: ignore[attr-defined]  # another thread's call, mid-way
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"^all 1 store connections busy for 0.5 s$"):
            store.org_exists("acme")
        assert 0.45 < time.monotonic() - started < 1.0
    assert store.org_exists("acme")
    store.close()


def test_statement_waiting_for_the_write_lock_times_out(fault_url: str) -> None:
    """A mutation that cannot get the write lock within the timeout fails (StoreUnavailable), changing nothing."""
    store = open_store(fault_url, timeout=0.5)
    with psycopg.connect(fault_url) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))  # another writer, mid-transaction
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as refused:
            store.create_org("blocked", NOW)
        assert 0.45 < time.monotonic() - started < 1.5
    assert str(refused.value) == f"store {store.where}: canceling statement due to statement timeout"
    assert not store.org_exists("blocked")  # and the connection went back to the pool, usable
    store.close()


def test_mutation_waits_for_the_write_lock(fault_url: str) -> None:
    """Mutations take the store's write lock: one waits while another writer holds it, then goes through."""
    store = open_store(fault_url)
    done = threading.Event()
    with psycopg.connect(fault_url) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
        writer = threading.Thread(target=lambda: (store.create_org("acme", NOW), done.set()))
        writer.start()
        assert not done.wait(0.3)
    writer.join(timeout=5)
    assert done.is_set()
    assert store.org_exists("acme")
    store.close()


def test_every_mutation_notifies(fault_url: str) -> None:
    """A mutation sends one NOTIFY on fluxauth_changes when it commits; a refused one sends none."""
    store = open_store(fault_url)
    with psycopg.connect(fault_url, autocommit=True) as listener:
        listener.execute("LISTEN fluxauth_changes")
        store.create_org("acme", NOW)
        store.create_key(key_record(), "t1", "hash-1", NOW)
        with pytest.raises(Conflict):
            store.create_org("acme", NOW)
        store.touch_keys({("acme", "ci"): NOW})  # not a change
        received = [n.channel for n in listener.notifies(timeout=0.5)]
    assert received == ["fluxauth_changes", "fluxauth_changes"]
    store.close()


def test_listener_wakes_on_changes_and_after_reconnecting(pg_server: PostgresServer, fault_url: str) -> None:
    """The listener calls back once on starting, at every change, and again each time its session is re-established."""
    store = open_store(fault_url)
    other = open_store(fault_url)

    async def scenario() -> list[str]:
        listener = store.listener()
        assert listener is not None
        events: list[str] = []
        woke = asyncio.Queue[None]()

        async def on_notice() -> None:
            events.append("notice")
            woke.put_nowait(None)

        task = asyncio.create_task(listener.follow(on_notice))
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(woke.get(), 10)  # listening: the catch-up call
            events.append("create")
            started = time.monotonic()
            await loop.run_in_executor(None, other.create_org, "acme", NOW)
            await asyncio.wait_for(woke.get(), 10)
            assert time.monotonic() - started < 0.5
            events.append("terminate")
            await loop.run_in_executor(None, pg_server.terminate_sessions)
            await asyncio.wait_for(woke.get(), 10)  # re-established: the catch-up call again
            events.append("delete")
            await loop.run_in_executor(None, other.create_org, "other", NOW)
            await asyncio.wait_for(woke.get(), 10)
        finally:
            task.cancel()
        return events

    assert asyncio.run(scenario()) == ["notice", "create", "notice", "terminate", "notice", "delete", "notice"]
    store.close()
    other.close()


def test_listener_survives_server_restart(
    pg_server: PostgresServer, fault_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopped and started again, the server gets the listener back; the outage is logged once, without a password."""
    store = open_store(fault_url)

    async def scenario() -> int:
        listener = store.listener()
        assert listener is not None
        woke = asyncio.Queue[None]()

        async def on_notice() -> None:
            woke.put_nowait(None)

        task = asyncio.create_task(listener.follow(on_notice))
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(woke.get(), 10)
            await loop.run_in_executor(None, pg_server.stop)
            await asyncio.sleep(1.0)  # several reconnection attempts fail meanwhile
            await loop.run_in_executor(None, pg_server.start)
            await asyncio.wait_for(woke.get(), 10)
            await loop.run_in_executor(None, store.create_org, "acme", NOW)
            await asyncio.wait_for(woke.get(), 10)
        finally:
            task.cancel()
        return getattr(listener, "sessions", 0)

    with caplog.at_level(logging.WARNING, logger="fluxauth.store"):
        assert asyncio.run(scenario()) == 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "fluxauth.store"]
    assert len([w for w in warnings if w.startswith("not listening")]) == 1
    assert any(w.startswith("listening for changes") for w in warnings)
    assert PASSWORD not in caplog.text
    store.close()
