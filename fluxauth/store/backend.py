"""What differs between the databases that ``fluxauth.store.sql`` serves: the ``Backend`` and its transactions.

``sqlite`` and ``postgres`` each provide one; ``sql`` (the queries) and
``schema`` (the migrations) run on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from fluxauth.store.base import ChangeListener


@dataclass(frozen=True, slots=True)
class Table:
    """A table as ``store copy`` moves it: its columns, in order, and which of them need converting."""

    name: str
    columns: tuple[str, ...]
    booleans: tuple[str, ...] = ()  # 0/1 in SQLite, BOOLEAN in PostgreSQL
    blobs: tuple[str, ...] = ()
    serial: str | None = None  # the column numbered by the database, continued after a copy


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Transaction(Protocol):
    """One open transaction: statements with ``?`` placeholders."""

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Cursor: ...

    def executemany(self, sql: str, params: Sequence[Sequence[Any]], /) -> Any: ...


class Backend(Protocol):
    """What differs between databases. Failures to reach the database raise ``StoreUnavailable``."""

    where: str  # the store, named for messages: never a password
    types: Mapping[str, str]  # the migrations' {real}, {blob}, {bool}, {serial}

    def read(self, *, statements: int = 2) -> AbstractContextManager[Transaction]:
        """A read-only transaction whose statements all see one snapshot.

        A backend may leave out the transaction for one statement alone, which
        is atomic by itself (and, on PostgreSQL, one round trip instead of three).
        """
        ...

    def write(self) -> AbstractContextManager[Transaction]:
        """A read-write transaction holding the store's write lock until it ends."""
        ...

    def schema_version(self, tx: Transaction) -> int: ...

    def set_schema_version(self, tx: Transaction, version: int) -> None: ...

    def announce(self, tx: Transaction) -> None:
        """Wake the servers listening for changes once ``tx`` commits (nothing where none can listen)."""
        ...

    def continue_sequences(self, tx: Transaction, tables: Sequence[Table]) -> None:
        """After rows were copied in with their numbers: make the next number follow the last one."""
        ...

    def listener(self) -> ChangeListener | None: ...

    def close(self) -> None: ...
