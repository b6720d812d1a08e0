"""Two minimal proxies under uvicorn, alike but for the upstream client: aiohttp, or fluxauth's pool.

``bench.py --with-minimal`` runs both beside the real setups, to measure the
choice that DESIGN.md §5 made (aiohttp, for httpx's pool collapses) against
the one ``fluxauth/upstream.py`` made later. Neither authenticates or filters
headers: only the upstream client differs.

    python loadtests/minimal_proxies.py aiohttp|pool --upstream http://127.0.0.1:8001 --port 8100
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import aiohttp
import uvicorn

from fluxauth.upstream import Origin, UpstreamPool

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("client", choices=("aiohttp", "pool"))
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = (aiohttp_app if args.client == "aiohttp" else pool_app)(args.upstream.rstrip("/"))
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools", log_level="warning", access_log=False
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
