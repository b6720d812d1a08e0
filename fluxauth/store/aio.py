"""Store calls off the event loop, in a small thread pool of their own, each bounded in time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import ParamSpec, TypeVar

from fluxauth.errors import StoreUnavailable
from fluxauth.store.base import Store

P = ParamSpec("P")
T = TypeVar("T")


class AsyncStore:
    """Runs ``Store`` methods in threads, so that the database's I/O never blocks the loop.

    With a ``timeout``, a call that has not returned by then (waiting for a
    thread included) raises ``StoreUnavailable``: the request gets its 503 in
    time, while the thread finishes or fails on its own (the store bounds its
    own waits too).
    """

    def __init__(self, store: Store, threads: int = 4, *, timeout: float | None = None) -> None:
        self.store = store
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fluxauth-store")

    async def call(self, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, partial(method, *args, **kwargs))
        if self.timeout is None:
            return await future
        try:
            return await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            raise StoreUnavailable(f"the store did not answer within {self.timeout:g} s") from None

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.store.close()
