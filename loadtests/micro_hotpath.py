"""CPU per request of the hot path, in process: no network, no other process sharing the cores.

``fluxauth serve``'s protocol (``LimitedHttpToolsProtocol``) is fed request
bytes on a transport that only records what is written, and the upstream
connection (``upstream.Connection``) is fed a 12 KiB tile response the same
way; what is timed is the Python (and httptools) work between the two, which
is what an optimization of the hot path changes. Loopback benchmarks
(``bench.py``) on a shared 2-core machine move by ±20 % from run to run; this
moves by a few per cent, so an A/B of a change reads here first.

    .venv/bin/python loadtests/micro_hotpath.py [--requests 4000] [--rounds 7] [--profile] [--route]

Prints the median µs per request of a cached tile forwarded, and of a cached
forward-auth answer; with ``--route``, the tile goes through a ``[[routes]]``
entry (bench.py's: a template and a pinned ``url``) instead of the plain upstream.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import json
import pstats
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop
from uvicorn.config import Config
from uvicorn.server import ServerState

from fluxauth.config.settings import Settings, load_settings
from fluxauth.decision.request import RequestHead
from fluxauth.manage.admin import Admin
from fluxauth.proxy.app import FluxAuthApp
from fluxauth.server.protocol import LimitedHttpToolsProtocol
from fluxauth.store.sqlite import SQLiteStore
from fluxauth.upstream.connection import Connection

TILE_PATH = b"/v1/services/tiles/acme/era5/main/tiles/WebMercatorQuad/1/0/0.png"
TILE = b"\x89PNG" + b"\0" * (12 * 1024 - 4)
ROUTE = {
    "protocol": "tiles",
    "org": "acme",
    "upstream": "http://127.0.0.1:8001/v1/services/tiles/{org}/{repo}/{ref}/tiles/{path}",
    "query": {"url": "/data/{org}/{repo}/{ref}.tif"},
}
UPSTREAM_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Tue, 01 Dec 2026 08:00:00 GMT\r\nContent-Type: image/png\r\n"
    b"Content-Length: %d\r\nLast-Modified: Tue, 01 Dec 2026 07:00:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "6750a0e0-3000"\r\nAccept-Ranges: bytes\r\n\r\n' % len(TILE)
) + TILE


class Recording:
    """A transport that keeps nothing but the count of what was written.

    The upstream's has a socket, one end of a socketpair nobody writes to:
    what the pool asks of a connection's socket before reusing it (is
    anything unread?) costs here what it costs on a real one.
    """

    def __init__(self, peer: tuple[str, int], *, with_socket: bool = False) -> None:
        self.peer = peer
        self.written = 0
        self.closing = False
        self.sock, self._other = socket.socketpair() if with_socket else (None, None)

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, data: Any) -> None:
        self.written += sum(len(part) for part in data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer, "sockname": ("127.0.0.1", 8000), "socket": self.sock}.get(name, default)


def timed(one: Callable[[], None], requests: int, rounds: int) -> list[float]:
    one()
    runs = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(requests):
            one()
        runs.append((time.perf_counter() - started) / requests * 1e6)
    return runs


async def measure(args: argparse.Namespace, store: Path) -> dict[str, list[float]]:
    environ = {"FLUXAUTH_STORE": str(store), "FLUXAUTH_TRUSTED_PROXIES": "127.0.0.1", "FLUXAUTH_LOG_LEVEL": "warning"}
    if args.route:
        environ["FLUXAUTH_ROUTES"] = json.dumps([ROUTE])
    settings = load_settings(environ=environ)
    admin = Admin(SQLiteStore(str(store)), Settings(argon2_profile="cheapest"))
    admin.create_org("acme")
    admin.enable_service("acme", "tiles")
    token = admin.create_key("acme", "bench", permissions=["read"]).token
    authorization = b"Basic " + base64.b64encode(f"acme:{token}".encode())
    app = FluxAuthApp(settings)
    await app.startup()
    try:
        warm = RequestHead("GET", TILE_PATH, b"", peer="127.0.0.1")
        warm.add_headers([(b"host", b"tiles.example.org"), (b"authorization", authorization)])
        decision = await app.gate.check(warm)
        assert decision.status == 200  # verified once, cached from now on
        assert decision.target is not None
        warm_target = decision.target
        assert (warm_target.routed is not None) == args.route
        config = Config(app, http=LimitedHttpToolsProtocol, access_log=False, log_level="warning", proxy_headers=False)
        config.load()
        protocol = LimitedHttpToolsProtocol(config, ServerState(), {})
        client = Recording(("127.0.0.1", 50000))
        protocol.connection_made(client)  # type: ignore[arg-type]

        pool = app.forwarder.pool
        origin = app.forwarder.origin_for(warm_target) if args.route else app.forwarder.origins["tiles"]
        upstream = Connection(
            origin, timers=pool.timers, max_header_bytes=pool.max_header_bytes, on_closed=pool._closed
        )
        upstream.connection_made(Recording(("127.0.0.1", 8001), with_socket=True))  # type: ignore[arg-type]
        pool._open += 1  # idle in the pool, as after a first request of the org's
        upstream.idle_since = pool.loop.time()
        pool._idle[(origin, "acme")] = {upstream: None}
        pool._idle_count += 1

        tile_request = b"GET %b HTTP/1.1\r\nHost: tiles.example.org\r\nUser-Agent: wrk\r\nAccept: */*\r\n" % TILE_PATH
        tile_request += b"Authorization: " + authorization + b"\r\n\r\n"
        auth_request = b"GET /_fluxauth/auth HTTP/1.1\r\nHost: fluxauth\r\nX-Original-URI: %b\r\n" % TILE_PATH
        auth_request += b"X-Original-Method: GET\r\nX-Forwarded-For: 198.51.100.7\r\nUser-Agent: wrk\r\n"
        auth_request += b"Authorization: " + authorization + b"\r\n\r\n"

        def tile() -> None:
            protocol.data_received(tile_request)
            upstream.data_received(UPSTREAM_RESPONSE)
            upstream.idle_since = pool.loop.time()

        def auth() -> None:
            protocol.data_received(auth_request)

        results = {}
        cases = [("tile forwarded", tile)] + ([] if args.tile_only else [("forward-auth 200", auth)])
        for name, one in cases:
            if args.profile:
                profile = cProfile.Profile()
                profile.enable()
                timed(one, args.requests, 1)
                profile.disable()
                print(f"--- {name}")
                pstats.Stats(profile).sort_stats("tottime").print_stats(20)
            results[name] = timed(one, args.requests, args.rounds)
        assert app.hot_path["forward"] > 0
        assert app.hot_path["auth"] > 0 or args.tile_only, app.hot_path
        assert app.outcomes.keys() == {200}, app.outcomes
        return results
    finally:
        await app.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=4000, help="requests a round (default 4000)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds; the median is printed (default 7)")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of one round of each")
    parser.add_argument("--route", action="store_true", help="the tile through a [[routes]] entry")
    parser.add_argument("--tile-only", action="store_true", help="only the tile (instruction counts under callgrind)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fluxauth-micro-") as tmp:
        results = uvloop.run(measure(args, Path(tmp) / "store.db"))
    for name, runs in results.items():
        spread = " ".join(f"{run:.1f}" for run in runs)
        print(f"{name:18} median {statistics.median(runs):6.1f} µs/request  (rounds: {spread})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
