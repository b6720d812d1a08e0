"""How long a new legitimate credential waits for its verification while wrong secrets flood the verify pool.

``fluxauth serve`` (one worker, the default argon2 profile and ``verify_threads``)
runs as a subprocess. Attackers, each from a loopback address of its own
(127.0.0.10, .11, ...), send wrong secrets for a real token id as fast as they
are answered; once their verifications are queued, a client from another
address (127.0.0.2) sends a key that was never used on this server, and the
time to its 200 is measured. Each round uses a fresh key and a fresh server.

    .venv/bin/python loadtests/verify_flood.py [--attackers 1] [--connections 32] [--rounds 3]

Prints each round's wait, the median, and the verifications run. With
``--guess`` the attackers send unknown token ids, so that each address is
held back only by its own failure limit and together they fill
``max_pending_verifications``. Only 127.0.0.0/8 is ever sent to.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from harness import FluxauthStore, Issued, Servers, basic, free_port, metric

TILE = "/v1/services/tiles/acme/era5/main/tiles/0/0/0"


async def attacker(
    url: str, victim: Issued, address: str, connections: int, stop: asyncio.Event, *, guess: bool
) -> int:
    """Wrong secrets for ``victim``'s token id (``guess``: unknown ids) from ``address`` until ``stop``; answers."""
    connector = aiohttp.TCPConnector(limit=connections, local_addr=(address, 0))
    answered = 0
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def one() -> None:
            nonlocal answered
            while not stop.is_set():
                token_id = secrets.token_hex(8) if guess else victim.token_id
                wrong = f"ema_{token_id}_{secrets.token_urlsafe(30)}"
                headers = {"Authorization": basic(victim.org, wrong)}
                try:
                    async with session.get(url + TILE, headers=headers) as response:
                        await response.read()
                        answered += 1
                except aiohttp.ClientError:
                    return

        await asyncio.gather(*(one() for _ in range(connections)))
    return answered


async def legitimate(url: str, key: Issued) -> tuple[int, float]:
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        started = time.perf_counter()
        headers = {"Authorization": key.authorization}
        async with session.get(url + TILE, headers=headers) as response:
            await response.read()
            return response.status, time.perf_counter() - started


async def round_(url: str, victim: Issued, fresh: Issued, args: argparse.Namespace) -> tuple[int, float]:
    stop = asyncio.Event()
    flood = [
        asyncio.create_task(attacker(url, victim, f"127.0.0.{10 + index}", args.connections, stop, guess=args.guess))
        for index in range(args.attackers)
    ]
    await asyncio.sleep(args.head_start)  # the flood's verifications are queued by now
    status, waited = await legitimate(url, fresh)
    stop.set()
    await asyncio.gather(*flood)
    return status, waited


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--attackers", type=int, default=1, help="flooding addresses (default 1)")
    parser.add_argument("--connections", type=int, default=32, help="connections per attacker (default 32)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each on a fresh server (default 3)")
    parser.add_argument("--head-start", type=float, default=0.5, help="seconds the flood runs first (default 0.5)")
    parser.add_argument(
        "--guess", action="store_true", help="unknown token ids, so that only each address's own limit holds it back"
    )
    args = parser.parse_args(argv)
    waits = []
    with tempfile.TemporaryDirectory(prefix="fluxauth-flood-") as tmp, Servers() as servers:
        store = FluxauthStore(Path(tmp) / "store.db")  # the default argon2 profile, as served
        store.cli("orgs", "create", "acme")
        store.cli("compute", "enable", "acme", "tiles")
        victim = store.create_key("acme", "victim", "--permission", "read")
        upstream_port = free_port()  # nothing listens: a 502 after the decision is as good as a 200 here
        for number in range(args.rounds):
            fresh = store.create_key("acme", f"fresh{number}", "--permission", "read")
            server = store.serve(servers, f"fluxauth{number}", Path(tmp), upstream=f"http://127.0.0.1:{upstream_port}")
            status, waited = asyncio.run(round_(server.url, victim, fresh, args))
            verified = metric(server.url, "fluxauth_verifications_total")
            overloaded = metric(server.url, "fluxauth_overloaded_total")
            servers.stop(server)
            waits.append(waited)
            print(
                f"round {number + 1}: new credential answered {status} after {waited:.2f} s "
                f"({verified:.0f} verifications in all, {overloaded:.0f} x 503 overloaded)"
            )
    print(
        f"{args.attackers} attacker(s) x {args.connections} connections: "
        f"median wait {statistics.median(waits):.2f} s, max {max(waits):.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
