"""Real servers for tests: uvicorn on ephemeral loopback ports, each in a thread of its own, and subprocesses.

In a thread rather than a subprocess where a test must reach inside (inject a
clock, read counters, poll the change feed); the server is the same uvicorn
with httptools that ``fluxauth serve`` runs. ``start_proxy`` is the one way
tests run fluxauth itself (``Proxy``); ``running_process`` runs anything else
(nginx, Caddy, ``fluxauth serve``) until a block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
import uvloop

from fluxauth.clock import FakeClock
from fluxauth.config.settings import Settings
from fluxauth.decision.policy import Decision, Outcome
from fluxauth.proxy.app import FluxAuthApp
from fluxauth.server.protocol import LimitedHttpToolsProtocol
from fluxauth.store.sqlite import SQLiteStore
from fluxauth.timers import Timers

T = TypeVar("T")

# The Redis database the tests use on 127.0.0.1:6379 (flushed by the tests that
# use it): a number of its own per checkout, so that suites run side by side
# in several checkouts do not flush each other's (FLUXAUTH_TEST_REDIS_DB).
REDIS_DB = int(os.environ.get("FLUXAUTH_TEST_REDIS_DB", "13"))


def redis_url(*, password: str | None = None) -> str:
    """The URL of the tests' Redis database, with ``password`` for the user ``default`` if given."""
    userinfo = f"default:{password}@" if password else ""
    return f"redis://{userinfo}127.0.0.1:6379/{REDIS_DB}"


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    with free_socket() as sock:
        return int(sock.getsockname()[1])


class ServerThread:
    """An ASGI app served by uvicorn on 127.0.0.1 on a port of its own."""

    def __init__(self, app: Any, *, also: list[socket.socket] | None = None, **config: Any) -> None:
        """``also``: more listening sockets for the same server (an admin listener)."""
        self.app = app
        self._also = also or []
        self._sock = free_socket()
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        options: dict[str, Any] = {
            "log_level": "warning",
            "lifespan": "on",
            "http": "httptools",
            "proxy_headers": False,
            "access_log": False,
        }
        if isinstance(app, FluxAuthApp):
            # What ``fluxauth serve`` runs: its limits, and the hot path (fluxauth/server/hotpath.py).
            options["http"] = LimitedHttpToolsProtocol
        options.update(config)
        self.server = uvicorn.Server(uvicorn.Config(app, **options))
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def serve() -> None:
            self.loop = asyncio.get_running_loop()
            await self.server.serve(sockets=[self._sock, *self._also])

        # uvloop, as ``fluxauth serve`` runs. (The plain asyncio loop sets
        # TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, which ours is
        # not; every response would then wait 40 ms for a delayed ACK.)
        uvloop.run(serve())

    def start(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the server's own event loop and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def settle(self, client: socket.socket) -> None:
        """Return once the server has read all that ``client`` (a connection to it) sent before this call.

        ``sendall`` returns once the bytes are in the client's send queue
        (Nagle's algorithm may keep a small piece there until the server
        acknowledges the last), and the loop reads them when it next polls:
        the kernel says when neither queue holds any (``queued_bytes``). What
        the loop does with them runs in the same callback as the read, so a
        timer a test fires after this sees it done.
        """
        deadline = time.monotonic() + 10
        while queued_bytes(self.port, client.getsockname()[1]):
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not read what was sent to it")
            time.sleep(0.001)
        self.call(asyncio.sleep(0))

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=20)
        for sock in (self._sock, *self._also):
            sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def queued_bytes(server_port: int, client_port: int) -> int:
    """Bytes of a loopback connection the server has not read: unsent by the client, or unread by the server.

    From the kernel's table of TCP sockets (Linux: /proc/net/tcp, ``tx_queue:rx_queue``).
    """
    server = f"0100007F:{server_port:04X}"
    client = f"0100007F:{client_port:04X}"
    queued = 0
    with open("/proc/net/tcp") as table:
        for line in table:
            fields = line.split()
            if len(fields) > 4 and {fields[1], fields[2]} == {server, client}:
                unsent, unread = (int(part, 16) for part in fields[4].split(":"))
                queued += unsent if fields[1] == client else unread
    return queued


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, *, timeout: float = 15) -> None:
    """Poll until ``port`` accepts connections; fail with the server's log if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {port} did not open:\n{log.read_text()}") from None
            time.sleep(0.02)


@contextlib.contextmanager
def running_process(args: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run a server as a subprocess until the block ends; yields its URL once its port answers."""
    with started_process(args, log, env) as process:
        wait_for_port(port, process, log)
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def started_process(
    args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess with its output appended to ``log`` until the block ends, terminated (then killed) after.

    For servers that start side by side before their ports are waited for (``running_process`` waits at once).
    """
    with log.open("ab") as output:
        process = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclasses.dataclass
class Proxy:
    """A running fluxauth (``fluxauth serve``'s protocol), its app and clock, and every decision it made."""

    server: ServerThread
    app: FluxAuthApp
    clock: FakeClock
    decisions: list[Decision]

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.stop()


def start_proxy(
    settings: Settings,
    store_path: str,
    clock: FakeClock,
    *,
    http: Any = None,
    timers: Timers | None = None,
    **config: Any,
) -> Proxy:
    """fluxauth under uvicorn (by default with ``fluxauth serve``'s protocol), every decision recorded for the test.

    ``timers``: the connections' timeouts, driven by the test (``ManualTimers``) instead of the loop's clock;
    ``config``: uvicorn's (``access_log=True`` leaves every request to the ASGI path).
    """
    app = FluxAuthApp(settings, SQLiteStore(store_path), clock=clock, timers=timers)
    decisions: list[Decision] = []
    check = app.gate.check

    async def recording_check(head: Any) -> Decision:
        decision = await check(head)
        decisions.append(decision)
        return decision

    decide_now = app.gate.decide_now

    def recording_decide_now(head: Any) -> Decision | None:
        # The hot path's decision is final when it forwards; any other answer
        # goes on to check (recorded above).
        decision = decide_now(head)
        if decision is not None and decision.outcome is Outcome.FORWARD:
            decisions.append(decision)
        return decision

    app.gate.check = recording_check  # type: ignore[method-assign]
    app.gate.decide_now = recording_decide_now  # type: ignore[method-assign]
    if http is not None:
        config["http"] = http
    server = ServerThread(app, **config).start()
    return Proxy(server, app, clock, decisions)
