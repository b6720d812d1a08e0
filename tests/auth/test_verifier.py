"""The verification pool's order: a client's first verification before anyone's backlog, returning credentials first."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

import pytest

from fluxauth.auth.verifier import Verifier


class Work:
    """Verifications that note their order; the first one (``blocker``) holds the only thread until released."""

    def __init__(self, blocker: str) -> None:
        self.blocker = blocker
        self.order: list[str] = []
        self.release = threading.Event()

    def __call__(self, name: str) -> str:
        if name == self.blocker:
            assert self.release.wait(10)
        self.order.append(name)
        return name


def run(test: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(test, 20))


async def queued(verifier: Verifier, count: int) -> None:
    """Let the event loop run until ``count`` verifications wait for a thread (no clock involved)."""
    for _ in range(100):
        if verifier.waiting == count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{verifier.waiting} waiting, expected {count}")


def test_verifier_new_client_goes_before_a_flooders_backlog() -> None:
    """One client's queued verifications do not sit in front of another client's first (the 9 s wait of issue 10)."""

    async def test() -> None:
        verifier = Verifier(1)
        work = Work("flood-0")
        flood = [asyncio.ensure_future(verifier.run("198.51.100.1", work, f"flood-{i}")) for i in range(20)]
        await queued(verifier, 19)
        new = asyncio.ensure_future(verifier.run("192.0.2.7", work, "new"))
        await queued(verifier, 20)
        work.release.set()
        assert (await new)[0] == "new"
        await asyncio.gather(*flood)
        verifier.shutdown()
        assert work.order[:2] == ["flood-0", "new"]
        assert work.order[2:] == [f"flood-{i}" for i in range(1, 20)]

    run(test())


def test_verifier_backlogs_take_turns_and_returning_credentials_go_first() -> None:
    """Two clients' backlogs interleave, oldest first within a round; a credential that verified before goes first."""

    async def test() -> None:
        verifier = Verifier(1)
        work = Work("x")
        tasks = [asyncio.ensure_future(verifier.run("x", work, "x"))]
        await asyncio.sleep(0)
        for name in ("a1", "a2", "a3"):
            tasks.append(asyncio.ensure_future(verifier.run("a", work, name)))
        for name in ("b1", "b2"):
            tasks.append(asyncio.ensure_future(verifier.run("b", work, name)))
        tasks.append(asyncio.ensure_future(verifier.run("a", work, "known", returning=True)))
        await queued(verifier, 6)
        work.release.set()
        await asyncio.gather(*tasks)
        verifier.shutdown()
        assert work.order == ["x", "known", "a1", "b1", "a2", "b2", "a3"]

    run(test())


def test_verifier_cancelled_waiter_frees_its_turn_and_shutdown_ends_the_waiting() -> None:
    """A waiting verification that is cancelled takes no thread; at shutdown, those still waiting are cancelled."""

    async def test() -> None:
        verifier = Verifier(1)
        work = Work("held")
        held = asyncio.ensure_future(verifier.run("a", work, "held"))
        await asyncio.sleep(0)
        gone = asyncio.ensure_future(verifier.run("b", work, "gone"))
        kept = asyncio.ensure_future(verifier.run("c", work, "kept"))
        await queued(verifier, 2)
        gone.cancel()
        work.release.set()
        await held
        assert (await kept)[0] == "kept"
        assert work.order == ["held", "kept"]
        work.blocker = "stuck"
        work.release.clear()
        stuck = asyncio.ensure_future(verifier.run("a", work, "stuck"))
        await asyncio.sleep(0)
        waiting = asyncio.ensure_future(verifier.run("b", work, "never"))
        await queued(verifier, 1)
        work.release.set()  # the thread finishes; the loop does not hand its turn on before shutdown
        verifier.shutdown()
        await stuck
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert "never" not in work.order

    run(test())
