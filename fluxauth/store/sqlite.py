"""The embedded store: one SQLite file in WAL mode, schema versioned by ``user_version``.

Each thread gets its own connection (SQLite connections are not shared across
threads); writes take ``BEGIN IMMEDIATE``, SQLite's write lock, so that the
command line and running servers never interleave half a change.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from fluxauth.errors import StoreUnavailable
from fluxauth.store.backend import Table, Transaction
from fluxauth.store.base import ChangeListener
from fluxauth.store.sql import SQLStore

TYPES = {
    "real": "REAL",
    "blob": "BLOB",
    "bool": "INTEGER",
    "serial": "INTEGER PRIMARY KEY AUTOINCREMENT",
}


class SQLiteBackend:
    """Connections, transactions and locks on one SQLite file."""

    types: Mapping[str, str] = TYPES

    def __init__(self, path: str) -> None:
        self.path = path
        self.where = repr(path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.connect(create=True)  # the one place a new store file may be made

    def connect(self, *, create: bool = False) -> sqlite3.Connection:
        """This thread's connection, checked against the file on disk at every call.

        An open connection would keep reading a file that was moved away or
        whose volume went missing; a stat (about a microsecond) tells, and the
        store then reports itself unavailable (503) instead of answering from a
        stale file. A replaced file gets a new connection.
        """
        try:
            stat = os.stat(self.path)
            identity: tuple[int, int] | None = (stat.st_dev, stat.st_ino)
        except FileNotFoundError:
            if not create:
                self._drop_local()
                raise StoreUnavailable(f"the store file {self.path!r} is missing") from None
            identity = None
        except OSError as exc:
            self._drop_local()
            raise StoreUnavailable(f"cannot reach the store: {exc.strerror}") from exc
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            if identity == getattr(self._local, "identity", None):
                return conn
            self._drop_local()
        directory = os.path.dirname(self.path)
        if directory and not os.path.isdir(directory):
            raise StoreUnavailable(f"store directory {directory!r} does not exist")
        # mode=rw: never create an empty store in place of a missing one.
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + ("?mode=rwc" if create else "?mode=rw")
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5.0)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open the store: {exc}") from exc
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
            stat = os.stat(self.path)
        except (sqlite3.Error, OSError) as exc:
            conn.close()
            raise StoreUnavailable(f"cannot open the store: {exc}") from exc
        self._local.conn = conn
        self._local.identity = (stat.st_dev, stat.st_ino)
        with self._lock:
            self._connections.append(conn)
        return conn

    def _drop_local(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            return
        self._local.conn = None
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
        conn.close()

    @contextmanager
    def read(self, *, statements: int = 2) -> Iterator[Transaction]:
        """A read transaction: every statement of one method sees the same snapshot.

        Without it each SELECT is a transaction of its own, and a method that reads
        twice (a key, then its tokens) could mix the states before and after a
        write by another process, e.g. a key's new expiry with its old tokens.
        """
        conn = self.connect()
        try:
            if statements == 1:
                yield conn
                return
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"store: {exc}") from exc

    @contextmanager
    def write(self) -> Iterator[Transaction]:
        conn = self.connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"store: {exc}") from exc
        try:
            yield conn
        except BaseException as exc:
            # SQLite may have rolled back on its own (disk full, I/O error); a
            # second ROLLBACK would then raise and hide the first error.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):  # locked, read-only, I/O: the store, not the input
                raise StoreUnavailable(f"store: {exc}") from exc
            raise
        else:
            try:
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StoreUnavailable(f"store: {exc}") from exc

    def schema_version(self, tx: Transaction) -> int:
        return int(tx.execute("PRAGMA user_version").fetchone()[0])

    def set_schema_version(self, tx: Transaction, version: int) -> None:
        tx.execute(f"PRAGMA user_version = {int(version)}")

    def announce(self, tx: Transaction) -> None:
        """Nothing: servers on SQLite poll the change feed (and hear Redis, when configured)."""

    def continue_sequences(self, tx: Transaction, tables: Sequence[Table]) -> None:
        """Nothing: AUTOINCREMENT continues after the highest number inserted."""

    def listener(self) -> ChangeListener | None:
        return None

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


class SQLiteStore(SQLStore):
    """The ``Store`` on one SQLite file."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(SQLiteBackend(path))
