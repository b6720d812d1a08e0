"""Minimal servers under uvicorn for ``bench.py --with-minimal``: the floors and ceilings fluxauth is read against.

- ``aiohttp`` and ``pool``: two minimal proxies, alike but for the upstream
  client (aiohttp, or fluxauth's pool), to measure the first choice
  (aiohttp, for httpx's pool collapses) against the one
  ``fluxauth/upstream/pool.py`` made later. Neither authenticates or filters headers.
- ``allow``: a forward-auth service that allows everything at once, the best
  any forward-auth under uvicorn can do behind nginx.

    python loadtests/minimal_proxies.py aiohttp|pool|allow --port 8100 [--upstream http://127.0.0.1:8001]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import aiohttp
import uvicorn

from fluxauth.upstream.pool import Origin, UpstreamPool

Scope = dict[str, Any]
_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding"})


def aiohttp_app(upstream: str) -> Any:
    session: aiohttp.ClientSession | None = None

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        nonlocal session
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                session = aiohttp.ClientSession(auto_decompress=False)
                await send({"type": "lifespan.startup.complete"})
            if session is not None:
                await session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert session is not None
        async with session.get(upstream + scope["raw_path"].decode()) as response:
            headers = [(k.lower(), v) for k, v in response.raw_headers if k.lower() not in _HOP]
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            async for chunk in response.content.iter_chunked(64 * 1024):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    return app


def pool_app(upstream: str) -> Any:
    pool = UpstreamPool(max_connections=256, connect_timeout=5, read_timeout=60)
    origin = Origin.from_url(upstream)

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await pool.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        head = b"GET " + scope["raw_path"] + b" HTTP/1.1\r\nhost: " + origin.host_header + b"\r\n\r\n"
        response = await pool.send(origin, head)
        try:
            headers = [(k, v) for k, v in response.headers if k not in _HOP]
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            while chunk := await response.read():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            pool.release(response)

    return app


async def allow(scope: Scope, receive: Any, send: Any) -> None:
    """Every forward-auth subrequest allowed, with the headers fluxauth would send."""
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"0"), (b"cache-control", b"no-store")]
    headers += [(b"x-fluxauth-org", b"acme"), (b"x-fluxauth-principal", b"bench@acme")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("server", choices=("aiohttp", "pool", "allow"))
    parser.add_argument("--upstream", default="http://127.0.0.1:8001")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    upstream = args.upstream.rstrip("/")
    app = {"aiohttp": lambda: aiohttp_app(upstream), "pool": lambda: pool_app(upstream), "allow": lambda: allow}[
        args.server
    ]()
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools", log_level="warning", access_log=False
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
