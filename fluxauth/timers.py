"""The event loop's time and timers, injected: timeouts that tests drive instead of sleeping through.

Every timeout on a connection — the head and keep-alive waits, a request
body's pace, a client that stops reading, the wait for an upstream connection,
a silent upstream — reads ``Timers.time()`` and arms ``Timers.call_at``. An
asyncio event loop is such an object (``loop.time``, ``loop.call_at``), and is
what runs in production. ``ManualTimers`` is what tests give instead: its time
moves only with ``advance``, which runs the timers that came due, each on the
event loop that armed it — so a test of a 10 s timeout takes no 10 s, and its
outcome does not depend on how busy the machine is.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None: ...

    def when(self) -> float: ...


class Timers(Protocol):
    """What timeouts need of an event loop: its clock and its timers."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> TimerHandle: ...


class timeout_at:  # noqa: N801 -- used like asyncio.timeout_at, which it is, over injected timers
    """``async with timeout_at(timers, when):`` raises ``TimeoutError`` if the block is still running at ``when``."""

    __slots__ = ("_cancelling", "_fired", "_handle", "_task", "_timers", "_when")

    def __init__(self, timers: Timers, when: float) -> None:
        self._timers = timers
        self._when = when
        self._fired = False
        self._handle: TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0

    async def __aenter__(self) -> timeout_at:
        self._task = asyncio.current_task()
        assert self._task is not None
        self._cancelling = self._task.cancelling()
        self._handle = self._timers.call_at(self._when, self._fire)
        return self

    def _fire(self) -> None:
        self._fired = True
        assert self._task is not None
        self._task.cancel()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        assert self._handle is not None
        assert self._task is not None
        self._handle.cancel()
        # Ours, not someone else's cancellation (asyncio.timeout's own rule).
        if self._fired and self._task.uncancel() <= self._cancelling and kind is asyncio.CancelledError:
            raise TimeoutError from exc


class _ManualHandle:
    __slots__ = ("_callback", "_loop", "_when", "cancelled")

    def __init__(self, when: float, callback: Callable[[], object], loop: asyncio.AbstractEventLoop) -> None:
        self._when = when
        self._callback = callback
        self._loop = loop
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def when(self) -> float:
        return self._when


class ManualTimers:
    """Timers whose time moves only when a test says so (``advance``), for deterministic timeout tests.

    Thread-safe: a server runs its loop in a thread of its own, and the test
    thread advances the time; each due timer runs on the loop that armed it,
    and ``advance`` returns once they all ran.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._due: list[tuple[float, int, _ManualHandle]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> _ManualHandle:
        loop = asyncio.get_running_loop()
        handle = _ManualHandle(when, (lambda: callback(*args)) if args else callback, loop)
        if when <= self.now:  # due already: runs soon, as the loop's own timers would
            loop.call_soon(self._run_here, handle)
            return handle
        with self._lock:
            heapq.heappush(self._due, (when, next(self._order), handle))
        return handle

    @staticmethod
    def _run_here(handle: _ManualHandle) -> None:
        if not handle.cancelled:
            handle._callback()

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> _ManualHandle:
        return self.call_at(self.now + delay, callback, *args)

    @property
    def pending(self) -> int:
        """Timers armed and not cancelled (some may be due only far ahead)."""
        with self._lock:
            return sum(1 for _, _, handle in self._due if not handle.cancelled)

    def wait_armed(self, when: float, timeout: float = 10.0) -> None:
        """Return once a timer due at ``when`` is armed: what a test waits for before it moves the time.

        Work that arms a timer may first wait for something real (a thread's
        argon2 verification, a socket): time moved before the timer exists
        would not count towards it. Waits in real time, at most ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if any(due == when and not handle.cancelled for due, _, handle in self._due):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"no timer due at {when:g} was armed within {timeout:g} s")
            time.sleep(0.001)

    def advance(self, seconds: float) -> None:
        """Move the time on by ``seconds``, running every timer that comes due on the way, in order."""
        target = self.now + seconds
        while True:
            with self._lock:
                if not self._due or self._due[0][0] > target:
                    break
                when, _, handle = heapq.heappop(self._due)
            if handle.cancelled:
                continue
            self.now = max(self.now, when)
            self._run(handle)
        self.now = target

    @staticmethod
    def _run(handle: _ManualHandle) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is handle._loop:
            handle._callback()
            return
        done = threading.Event()

        def run() -> None:
            try:
                if not handle.cancelled:
                    handle._callback()
            finally:
                done.set()

        handle._loop.call_soon_threadsafe(run)
        if not done.wait(10):
            raise RuntimeError("a timer's event loop did not run it within 10 s")
