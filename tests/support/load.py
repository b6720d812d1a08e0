"""Bursts of concurrent requests for tests.

aiohttp rather than httpx here: httpx's async pool collapses under concurrency
(encode/httpx#3215) and would make these tests measure httpx.
httpx stays the client for everything else.
"""

from __future__ import annotations

import asyncio

import aiohttp


async def burst(url: str, *, headers: dict[str, str], count: int, concurrency: int = 50) -> list[int]:
    """``count`` GETs of ``url``, ``concurrency`` at a time; their statuses in order."""
    limit = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(headers=headers) as session:

        async def one() -> int:
            async with limit, session.get(url) as response:
                await response.read()
                return response.status

        return list(await asyncio.gather(*(one() for _ in range(count))))
