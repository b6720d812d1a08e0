"""``make bench``: fluxauth against the proxies a user would pick instead, in one run, side by side.

On loopback, with the same wrk load (``--connections``, ``--duration``) and a
12 KiB tile served by an nginx upstream, interleaved within each repetition
(A B C ... then again) and reduced to medians:

- the upstream directly;
- Caddy ``basicauth`` (bcrypt, with its cache of verified passwords) + ``reverse_proxy``;
- nginx ``auth_basic`` (bcrypt through crypt(3), hashing on every request) + ``proxy_pass``;
- ``fluxauth serve`` with 1 worker and with N workers (real SQLite store made
  through the CLI, default argon2 profile: the cached path is what is measured);
- ``fluxauth serve`` with a route (``[[routes]]``, TiTiler's shape: a template
  and a pinned ``url``) instead of ``[upstreams]``, 1 worker: what routing costs;
- nginx in front with fluxauth as forward-auth (``config/nginx-forward-auth.conf``).

Then the cold path (200 concurrent requests with a never-seen token: exactly one
argon2 verification, counted through ``/_fluxauth/metrics``; time to first byte)
and an attack (wrong secrets flooded for the real token id while wrk measures
cached legitimate traffic). Prints a table, writes the same as JSON to
``loadtests/results/bench-<timestamp>.json``; exits 1 if the cold path did not
verify exactly once or a setup answered anything but 200.

wrk and every server share the machine's cores (no pinning): that is the
"equal footing" here, and it is noted in the output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import random
import shutil
import statistics
import string
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from harness import (
    PYTHON,
    RESULTS,
    ROOT,
    FluxauthStore,
    Issued,
    Load,
    Server,
    Servers,
    WrkResult,
    ensure_debian_packages,
    free_port,
    metric,
    run_wrk,
    wrk_command,
)

TILE_PATH = "/v1/services/tiles/acme/era5/main/tiles/WebMercatorQuad/1/0/0.png"
# The route of the "with a route" row: the template puts the service path back
# under the same prefix, so nginx serves the same file; the pinned url is TiTiler's shape.
ROUTE = {
    "protocol": "tiles",
    "org": "acme",
    "upstream": "http://127.0.0.1:{port}/v1/services/tiles/{{org}}/{{repo}}/{{ref}}/tiles/{{path}}",
    "query": {"url": "/data/{org}/{repo}/{ref}.tif"},
}
TILE_BYTES = 12 * 1024
BCRYPT_COST = 10  # bcrypt's usual default; ~0.09 s a hash here
FORWARD_AUTH_CONF = ROOT / "config" / "nginx-forward-auth.conf"

NGINX_MAIN = """\
daemon off;
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    # wrk keeps its connections for the whole run; nginx's default (1000) would reconnect them.
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ image/png png; }}
{body}
}}
"""

UPSTREAM_SERVER = """\
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
"""

AUTH_BASIC_SERVER = """\
    upstream tiles {{
        server 127.0.0.1:{upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            auth_basic "fluxauth bench";
            auth_basic_user_file {htpasswd};
            proxy_pass http://tiles;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""

# The same auth_request round trip as config/nginx-forward-auth.conf, with the
# subrequest answered by {answer}: nginx itself (the ceiling of any forward-auth
# service), or a uvicorn app that allows everything (the best a Python one can do).
AUTH_REQUEST_SERVER = """\
    upstream tiles {{
        server 127.0.0.1:{upstream};
        keepalive 64;
    }}
{auth_upstream}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            auth_request /_auth;
            proxy_pass http://tiles;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location = /_auth {{
            internal;
{answer}
        }}
    }}
"""
ANSWERED_BY_NGINX = "            return 204;"
ALLOW_ALL_UPSTREAM = """\
    upstream allow {{
        server 127.0.0.1:{port};
        keepalive 32;
    }}"""
ANSWERED_BY_ALLOW_ALL = """\
            proxy_pass http://allow/_fluxauth/auth;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;"""

CADDYFILE = """\
{{
    admin off
    auto_https off
}}

http://127.0.0.1:{port} {{
    basicauth {{
        {username} {hash}
    }}
    reverse_proxy 127.0.0.1:{upstream}
}}
"""


# -- the tile -------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def tile_png(size: int = TILE_BYTES) -> bytes:
    """A real 256 x 256 PNG (the demo upstream's tile 1/0/0) padded to exactly ``size`` bytes.

    The padding is a private ancillary chunk, which PNG readers skip.
    """
    from fluxauth.demo.upstream import render_tile

    png: bytes = render_tile(1, 0, 0)
    end = png.rindex(b"IEND") - 4
    padding = size - len(png) - 12
    if padding < 0:
        raise ValueError(f"the tile is already {len(png)} bytes")
    return png[:end] + _png_chunk(b"fxPd", b"\0" * padding) + png[end:]


# -- password hashes for Caddy and nginx ---------------------------------------------


def caddy_hash(password: str) -> str:
    """What ``caddy hash-password`` makes (bcrypt, Caddy's default cost)."""
    done = subprocess.run(
        ["caddy", "hash-password", "--plaintext", password], capture_output=True, text=True, check=True
    )
    return done.stdout.strip().splitlines()[-1]


def htpasswd_hash(password: str) -> tuple[str, str]:
    """A hash for nginx ``auth_basic`` and a description of it.

    nginx checks passwords with the system's crypt(3). Debian's is libxcrypt,
    which knows bcrypt (``$2b$``); the hash is checked through the same
    crypt(3) before use, and sha512crypt (``$6$``) is the fallback if bcrypt
    is refused.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # crypt leaves the stdlib in 3.13
        import crypt

    for method, label in (
        (crypt.METHOD_BLOWFISH, f"bcrypt $2b$ cost {BCRYPT_COST}"),
        (crypt.METHOD_SHA512, "sha512crypt $6$ (bcrypt refused by this crypt(3))"),
    ):
        rounds = 2**BCRYPT_COST if method is crypt.METHOD_BLOWFISH else None
        try:
            hashed = crypt.crypt(password, crypt.mksalt(method, rounds=rounds))
        except (OSError, ValueError):
            continue
        if hashed and crypt.crypt(password, hashed) == hashed:
            return hashed, label
    raise RuntimeError("crypt(3) accepts neither bcrypt nor sha512crypt")


# -- the setups -----------------------------------------------------------------


@dataclass
class Setup:
    """One way of serving the tile behind authentication, and what wrk measured of it."""

    key: str
    label: str
    url: str
    runs: list[WrkResult] = field(default_factory=list)

    def median(self, name: str) -> float:
        return float(statistics.median(getattr(run, name) for run in self.runs))


class Bench:
    """Starts the servers of one run and measures them."""

    def __init__(self, args: argparse.Namespace, tmp: Path, servers: Servers) -> None:
        self.args = args
        self.tmp = tmp
        self.servers = servers
        self.load = Load(connections=args.connections, duration=args.duration, threads=args.threads)
        self.notes: list[str] = []
        self.store = FluxauthStore(tmp / "store.db")  # the default argon2 profile
        self.key: Issued | None = None
        self.upstream_port = 0

    # -- servers ----------------------------------------------------------

    def nginx(self, name: str, body: str, port: int, workers: int = 2) -> Server:
        directory = self.tmp / name
        directory.mkdir()
        conf = directory / "nginx.conf"
        conf.write_text(NGINX_MAIN.format(tmp=directory, workers=workers, body=body))
        server = self.servers.start(
            name, ["nginx", "-p", str(directory), "-c", str(conf)], port, directory / "stderr.log"
        )
        server.wait_ready()
        return server

    def start_upstream(self) -> Server:
        root = self.tmp / "www"
        tile = root / TILE_PATH.lstrip("/")
        tile.parent.mkdir(parents=True)
        tile.write_bytes(tile_png())
        self.upstream_port = free_port()
        return self.nginx("upstream", UPSTREAM_SERVER.format(port=self.upstream_port, root=root), self.upstream_port)

    def create_key(self) -> Issued:
        self.store.cli("orgs", "create", "acme")
        self.store.cli("compute", "enable", "acme", "tiles")
        self.key = self.store.create_key("acme", "bench", "--permission", "read")
        return self.key

    def start_caddy(self) -> Server:
        assert self.key is not None
        port = free_port()
        directory = self.tmp / "caddy"
        directory.mkdir()
        caddyfile = directory / "Caddyfile"
        caddyfile.write_text(
            CADDYFILE.format(
                port=port, username=self.key.org, hash=caddy_hash(self.key.token), upstream=self.upstream_port
            )
        )
        env = {**os.environ, "HOME": str(directory), "XDG_DATA_HOME": str(directory), "XDG_CONFIG_HOME": str(directory)}
        server = self.servers.start(
            "caddy",
            ["caddy", "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
            port,
            directory / "caddy.log",
            env,
        )
        server.wait_ready()
        return server

    def start_auth_basic(self) -> Server:
        assert self.key is not None
        hashed, label = htpasswd_hash(self.key.token)
        self.notes.append(f"nginx auth_basic: {label}, checked by crypt(3) on every request")
        htpasswd = self.tmp / "htpasswd"
        htpasswd.write_text(f"{self.key.org}:{hashed}\n")
        port = free_port()
        body = AUTH_BASIC_SERVER.format(port=port, upstream=self.upstream_port, htpasswd=htpasswd)
        return self.nginx("nginx-auth-basic", body, port)

    def start_fluxauth(self, name: str, workers: int, **env: str) -> Server:
        settings = dict(item.split("=", 1) for item in self.args.fluxauth_env)
        return self.store.serve(
            self.servers,
            name,
            self.tmp,
            upstream=f"http://127.0.0.1:{self.upstream_port}",
            workers=workers,
            **{**settings, **env},
        )

    def start_fluxauth_routed(self, name: str, workers: int) -> Server:
        """``fluxauth serve`` with the tile behind a route rather than the plain upstream."""
        route = {**ROUTE, "upstream": str(ROUTE["upstream"]).format(port=self.upstream_port)}
        return self.start_fluxauth(name, workers, FLUXAUTH_ROUTES=json.dumps([route]))

    def start_minimal(self, kind: str) -> Server:
        """One of ``loadtests/minimal_proxies.py``'s servers (``--with-minimal``)."""
        port = free_port()
        args = [PYTHON, str(ROOT / "loadtests" / "minimal_proxies.py"), kind, "--port", str(port)]
        args += ["--upstream", f"http://127.0.0.1:{self.upstream_port}"]
        server = self.servers.start(f"minimal-{kind}", args, port, self.tmp / f"minimal-{kind}.log")
        server.wait_ready()
        return server

    def start_granian(self, name: str, workers: int) -> Server:
        """fluxauth's app under granian instead of uvicorn (``--with-granian``; not how fluxauth ships)."""
        granian = Path(PYTHON).with_name("granian")
        port = free_port()
        args = [str(granian), "--interface", "asgi", "--loop", "uvloop", "--host", "127.0.0.1", "--port", str(port)]
        args += ["--workers", str(workers), "--no-ws", "--log-level", "warning", "--factory"]
        env = {**self.store.env, "FLUXAUTH_UPSTREAM": f"http://127.0.0.1:{self.upstream_port}"}
        server = self.servers.start(
            name, [*args, "fluxauth.proxy.app:app_from_environment"], port, self.tmp / f"{name}.log", env
        )
        server.wait_ready("/_fluxauth/readyz")
        return server

    def start_forward_auth(self, workers: int, *, cache: bool = False) -> Server:
        """nginx with ``config/nginx-forward-auth.conf`` as shipped (``cache``: with its optional auth cache on)."""
        name = f"forward-auth-{workers}" + ("-cached" if cache else "")
        fluxauth = self.start_fluxauth(f"fluxauth-{name}", workers, FLUXAUTH_TRUSTED_PROXIES="127.0.0.1")
        port = free_port()
        text = FORWARD_AUTH_CONF.read_text()
        replacements = {
            "127.0.0.1:8000": f"127.0.0.1:{fluxauth.port}",
            "127.0.0.1:8001": f"127.0.0.1:{self.upstream_port}",
            "listen 8080;": f"listen 127.0.0.1:{port};",
        }
        if cache:
            replacements["#cache "] = ""
            replacements["/run/nginx-fluxauth-cache"] = str(self.tmp / f"{name}-cache")
        for old, new in replacements.items():
            if old not in text:
                raise RuntimeError(f"{old!r} is no longer in {FORWARD_AUTH_CONF}")
            text = text.replace(old, new)
        return self.nginx(f"nginx-{name}", text, port)

    def start_auth_request_ceiling(self) -> Server:
        """nginx ``auth_request`` whose subrequest nginx answers itself: what any forward-auth costs nginx alone."""
        port = free_port()
        body = AUTH_REQUEST_SERVER.format(
            port=port, upstream=self.upstream_port, auth_upstream="", answer=ANSWERED_BY_NGINX
        )
        return self.nginx("nginx-auth-request-ceiling", body, port)

    def start_auth_request_allow_all(self) -> Server:
        """nginx ``auth_request`` to a uvicorn app that allows everything: the best a Python forward-auth can do."""
        allow = self.start_minimal("allow")
        port = free_port()
        body = AUTH_REQUEST_SERVER.format(
            port=port,
            upstream=self.upstream_port,
            auth_upstream=ALLOW_ALL_UPSTREAM.format(port=allow.port),
            answer=ANSWERED_BY_ALLOW_ALL,
        )
        return self.nginx("nginx-auth-request-allow-all", body, port)

    # -- measuring --------------------------------------------------------

    @property
    def headers(self) -> list[str]:
        assert self.key is not None
        return [f"Authorization: {self.key.authorization}"]

    def check_url(self, url: str) -> None:
        """One request: the tile, whole, with 200 (this also warms Caddy's bcrypt cache)."""
        assert self.key is not None
        request = urllib.request.Request(url, headers={"Authorization": self.key.authorization})  # noqa: S310
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
            body = response.read()
            if response.status != 200 or len(body) != TILE_BYTES:
                raise RuntimeError(f"{url}: {response.status}, {len(body)} bytes")

    def warm_up(self, setup: Setup) -> None:
        self.check_url(setup.url)
        run_wrk(setup.url, Load(self.load.connections, self.args.warmup, self.load.threads), headers=self.headers)

    def measure(self, setups: list[Setup]) -> None:
        for repeat in range(self.args.repeats):
            order = setups if repeat % 2 == 0 else list(reversed(setups))  # no setup always goes first
            for setup in order:
                result = run_wrk(setup.url, self.load, headers=self.headers)
                setup.runs.append(result)
                flag = "" if result.clean else f"  ({result.non_2xx} non-2xx, {result.socket_errors} socket errors)"
                print(
                    f"  [{repeat + 1}/{self.args.repeats}] {setup.label:46} {result.requests_per_second:9.0f} req/s"
                    f"  p50 {result.p50_ms:8.2f} ms  p99 {result.p99_ms:8.2f} ms{flag}",
                    file=sys.stderr,
                )

    # -- cold path --------------------------------------------------------

    def cold_path(self, requests: int = 200) -> dict[str, Any]:
        """``requests`` concurrent requests with a token no server has seen: one verification, and how long."""
        server = self.start_fluxauth("fluxauth-cold", 1)
        issued = self.store.create_key("acme", "cold", "--permission", "read")
        before = metric(server.url, "fluxauth_verifications_total")
        statuses, headers_ms, total_ms = asyncio.run(
            _concurrent_gets(server.url + TILE_PATH, issued.authorization, requests)
        )
        after = metric(server.url, "fluxauth_verifications_total")
        verify_seconds = metric(server.url, "fluxauth_verification_seconds_sum")
        self.servers.stop(server)
        ordered = sorted(headers_ms)
        return {
            "requests": requests,
            "statuses": {str(code): count for code, count in sorted(Counter(statuses).items())},
            "verifications": after - before,
            "verification_seconds": verify_seconds,
            "first_byte_ms": ordered[0],
            "p50_first_byte_ms": statistics.median(ordered),
            "max_first_byte_ms": ordered[-1],
            "all_done_ms": max(total_ms),
            "ok": after - before == 1 and set(statuses) == {200},
        }

    # -- attack -----------------------------------------------------------

    def attack(self) -> dict[str, Any]:
        """Cached legitimate traffic, quiet and while wrong secrets flood in for the same token id.

        Each repetition runs on a fresh ``fluxauth serve`` (1 worker, default
        settings), so that the flood meets a fresh rate-limiter window: its
        first ``rate_limit_failures`` (20) wrong secrets are verified with argon2
        before the limiter answers 429 for the rest of the window (60 s). The
        first phase under attack ("burst") holds those verifications, the
        second ("steady") only 429s: per minute of a real attack, one burst.
        """
        assert self.key is not None
        script = self.tmp / "wrong-secrets.lua"
        script.write_text(_wrong_secrets_script(self.key, TILE_PATH))
        duration = self.load.duration
        attacker_load = Load(self.args.attack_connections, 2 * duration + 10, threads=1)
        runs: dict[str, list[WrkResult]] = {"quiet": [], "burst": [], "steady": []}
        floods: dict[str, list[dict[str, float]]] = {"burst": [], "steady": []}
        for repeat in range(self.args.attack_repeats):
            server = self.start_fluxauth(f"fluxauth-attack-{repeat}", 1)
            url = server.url + TILE_PATH
            self.check_url(url)
            run_wrk(url, Load(self.load.connections, self.args.warmup, self.load.threads), headers=self.headers)
            runs["quiet"].append(run_wrk(url, self.load, headers=self.headers))
            counts = _attack_counters(server.url)
            attacker = subprocess.Popen(
                wrk_command(server.url + "/", attacker_load, script=script), stdout=subprocess.DEVNULL
            )
            try:
                for phase in ("burst", "steady"):
                    runs[phase].append(run_wrk(url, self.load, headers=self.headers))
                    after = _attack_counters(server.url)
                    flood = {name: after[name] - counts[name] for name in counts}
                    flood["requests_per_second"] = (flood["answered_401"] + flood["answered_429"]) / duration
                    floods[phase].append(flood)
                    counts = after
            finally:
                attacker.terminate()
                attacker.wait()
                self.servers.stop(server)
            print(
                f"  [{repeat + 1}/{self.args.attack_repeats}] legit p99 quiet {runs['quiet'][-1].p99_ms:.2f} ms,"
                f" attack burst {runs['burst'][-1].p99_ms:.2f} ms"
                f" ({floods['burst'][-1]['verifications']:.0f} argon2),"
                f" attack steady {runs['steady'][-1].p99_ms:.2f} ms;"
                f" flood {floods['steady'][-1]['requests_per_second']:.0f} req/s",
                file=sys.stderr,
            )
        quiet_p99 = statistics.median(r.p99_ms for r in runs["quiet"])
        result: dict[str, Any] = {
            "target": "fluxauth serve, 1 worker (a fresh one per repetition)",
            "attacker_connections": self.args.attack_connections,
            "repetitions": self.args.attack_repeats,
            "quiet": _summary(runs["quiet"]),
        }
        for phase in ("burst", "steady"):
            p99 = statistics.median(r.p99_ms for r in runs[phase])
            result[phase] = {
                **_summary(runs[phase]),
                "p99_ratio": p99 / quiet_p99,
                "goal_met": p99 <= 2 * quiet_p99,
                "flood": {name: statistics.median(f[name] for f in floods[phase]) for name in floods[phase][0]},
            }
        result["runs"] = {phase: [asdict(r) for r in phase_runs] for phase, phase_runs in runs.items()}
        return result


def _attack_counters(base: str) -> dict[str, float]:
    return {
        "answered_401": metric(base, "fluxauth_decisions_total", '{status="401"}'),
        "answered_429": metric(base, "fluxauth_decisions_total", '{status="429"}'),
        "verifications": metric(base, "fluxauth_verifications_total"),
    }


def _summary(runs: list[WrkResult]) -> dict[str, float]:
    return {
        "requests_per_second": statistics.median(r.requests_per_second for r in runs),
        "p50_ms": statistics.median(r.p50_ms for r in runs),
        "p99_ms": statistics.median(r.p99_ms for r in runs),
    }


def _wrong_secrets_script(key: Issued, path: str, count: int = 512) -> str:
    """A wrk script that sends ``key``'s token id with ``count`` different wrong secrets, in turn."""
    alphabet = string.ascii_letters + string.digits + "_-"
    secret = key.token.rsplit("_", 1)[1]
    values = []
    for _ in range(count):
        wrong = "".join(random.choice(alphabet) for _ in secret)
        values.append(Issued(key.org, key.name, key.token[: -len(secret)] + wrong, key.token_id).authorization)
    lines = ",\n".join(f'  "{value}"' for value in values)
    return (
        f"local values = {{\n{lines}\n}}\n"
        "local n = 0\n"
        "request = function()\n"
        "  n = n + 1\n"
        f'  return wrk.format("GET", "{path}", {{["Authorization"] = values[n % #values + 1]}})\n'
        "end\n"
    )


async def _concurrent_gets(url: str, authorization: str, count: int) -> tuple[list[int], list[float], list[float]]:
    """``count`` GETs fired at once, each on its own connection: statuses, ms to headers, ms to the end."""
    started = 0.0
    statuses: list[int] = []
    headers_ms: list[float] = []
    total_ms: list[float] = []
    gate = asyncio.Event()

    async def one(session: aiohttp.ClientSession) -> None:
        await gate.wait()
        async with session.get(url, headers={"Authorization": authorization}) as response:
            headers_ms.append((time.perf_counter() - started) * 1000)
            await response.read()
            total_ms.append((time.perf_counter() - started) * 1000)
            statuses.append(response.status)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        tasks = [asyncio.create_task(one(session)) for _ in range(count)]
        await asyncio.sleep(0.05)  # every task is waiting at the gate
        started = time.perf_counter()
        gate.set()
        await asyncio.gather(*tasks)
    return statuses, headers_ms, total_ms


# -- reporting ------------------------------------------------------------------


def _version(args: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        done = subprocess.run(args, capture_output=True, text=True, check=True)
        return (done.stdout + done.stderr).strip().splitlines()[0]
    return "?"


def table(setups: list[Setup], caddy: Setup) -> str:
    caddy_rate, caddy_p99 = caddy.median("requests_per_second"), caddy.median("p99_ms")
    lines = [
        f"{'setup':48} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'req/s÷Caddy':>12} {'p99÷Caddy':>10}",
        "-" * 99,
    ]
    for setup in setups:
        rate, p50, p99 = setup.median("requests_per_second"), setup.median("p50_ms"), setup.median("p99_ms")
        flag = "" if all(run.clean for run in setup.runs) else "  !errors"
        lines.append(
            f"{setup.label:48} {rate:9.0f} {p50:8.2f} {p99:8.2f}"
            f" {rate / caddy_rate:11.2f}x {p99 / caddy_p99:9.2f}x{flag}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=8, help="seconds of each wrk run (default 8)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions; medians (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2, the machine's cores)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of wrk before measuring a setup")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="N of the N-worker fluxauth")
    parser.add_argument("--attack-connections", type=int, default=8, help="connections of the wrong-secret flood")
    parser.add_argument("--attack-repeats", type=int, default=3, help="repetitions of the attack (default 3)")
    parser.add_argument("--quick", action="store_true", help="about 1.5 minutes: 2 repeats of 4 s, 1 attack")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-path measurement")
    parser.add_argument("--no-attack", action="store_true", help="skip the attack measurement")
    parser.add_argument(
        "--with-granian", action="store_true", help="also fluxauth's app under granian (pip install granian)"
    )
    parser.add_argument(
        "--with-minimal",
        action="store_true",
        help="also two minimal proxies without auth: aiohttp's client, fluxauth's pool (minimal_proxies.py)",
    )
    parser.add_argument(
        "--only", help="comma-separated setup keys to run (Caddy and fluxauth_1 always run), e.g. granian_1,fluxauth_2"
    )
    parser.add_argument(
        "--fluxauth-env",
        action="append",
        default=[],
        metavar="FLUXAUTH_KEY=VALUE",
        help="a setting for every fluxauth started (repeatable), e.g. FLUXAUTH_VERIFY_THREADS=1",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    args = parser.parse_args(argv)
    for item in args.fluxauth_env:
        if not item.startswith("FLUXAUTH_") or "=" not in item:
            parser.error(f"--fluxauth-env {item!r}: expected FLUXAUTH_KEY=VALUE")
    if args.with_granian and not Path(PYTHON).with_name("granian").exists():
        parser.error(f"--with-granian: granian is not installed ({Path(PYTHON).with_name('pip')} install granian)")
    if args.quick:
        args.duration, args.repeats, args.warmup, args.attack_repeats = 4, 2, 1, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_debian_packages({"wrk": "wrk", "nginx": "nginx-light", "caddy": "caddy"})
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="fluxauth-bench-"))
    # nginx's workers run as www-data when started by root: they read the tile and the htpasswd.
    tmp.chmod(0o755)
    started = datetime.datetime.now(datetime.UTC)
    try:
        with Servers() as servers:
            return run(args, tmp, servers, started)
    except KeyboardInterrupt:
        print("interrupted; every server is stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"configs and logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path, servers: Servers, started: datetime.datetime) -> int:
    bench = Bench(args, tmp, servers)
    print("starting servers ...", file=sys.stderr)
    upstream = bench.start_upstream()
    bench.create_key()
    n = args.workers
    starters: list[tuple[str, str, Callable[[], Server]]] = [
        ("upstream", "upstream (nginx, static tile), direct", lambda: upstream),
        ("caddy", "Caddy basicauth + reverse_proxy", bench.start_caddy),
        ("nginx_auth_basic", "nginx auth_basic (bcrypt) + proxy_pass", bench.start_auth_basic),
        ("fluxauth_1", "fluxauth serve, 1 worker", lambda: bench.start_fluxauth("fluxauth-1", 1)),
        (
            "fluxauth_route_1",
            "fluxauth serve with a route, 1 worker",
            lambda: bench.start_fluxauth_routed("fluxauth-route-1", 1),
        ),
        (f"fluxauth_{n}", f"fluxauth serve, {n} workers", lambda: bench.start_fluxauth(f"fluxauth-{n}", n)),
        ("forward_auth_1", "nginx + fluxauth forward-auth (1 worker)", lambda: bench.start_forward_auth(1)),
        (f"forward_auth_{n}", f"nginx + fluxauth forward-auth ({n} workers)", lambda: bench.start_forward_auth(n)),
        (
            "forward_auth_cached",
            "nginx + forward-auth, 5 s auth cache (1 worker)",
            lambda: bench.start_forward_auth(1, cache=True),
        ),
        ("auth_request_ceiling", "nginx auth_request answered by nginx (ceiling)", bench.start_auth_request_ceiling),
    ]
    if args.with_minimal:
        starters += [
            ("minimal_aiohttp", "minimal proxy, aiohttp client (no auth)", lambda: bench.start_minimal("aiohttp")),
            ("minimal_pool", "minimal proxy, fluxauth's pool (no auth)", lambda: bench.start_minimal("pool")),
            (
                "auth_request_allow_all",
                "nginx auth_request to uvicorn allowing all",
                bench.start_auth_request_allow_all,
            ),
        ]
    if args.with_granian:
        starters += [
            ("granian_1", "fluxauth app under granian, 1 worker", lambda: bench.start_granian("granian-1", 1)),
            (
                f"granian_{n}",
                f"fluxauth app under granian, {n} workers",
                lambda: bench.start_granian(f"granian-{n}", n),
            ),
        ]
    wanted = {"caddy", "fluxauth_1", *args.only.split(",")} if args.only else None
    setups = [
        Setup(key, label, start().url + TILE_PATH) for key, label, start in starters if wanted is None or key in wanted
    ]
    by_key = {setup.key: setup for setup in setups}
    caddy = by_key["caddy"]
    print("warming up (one checked request, then wrk) ...", file=sys.stderr)
    for setup in setups:
        bench.warm_up(setup)
    print(
        f"measuring: wrk -t{bench.load.threads} -c{bench.load.connections} -d{bench.load.duration:g}s,"
        f" {args.repeats} interleaved repetitions",
        file=sys.stderr,
    )
    bench.measure(setups)

    cold = None if args.no_cold else bench.cold_path()
    attack = None if args.no_attack else bench.attack()

    cores = os.cpu_count()
    if args.fluxauth_env:
        bench.notes.append(f"fluxauth started with {' '.join(args.fluxauth_env)}")
    bench.notes += [
        f"{cores} cores shared by wrk ({bench.load.threads} threads) and every server; no CPU pinning",
        "Caddy's hash comes from `caddy hash-password` (bcrypt, Caddy's default cost); Caddy caches verified passwords",
        "fluxauth: SQLite store made with the CLI, default argon2 profile (rfc9106-low-memory); cached path measured",
        "nginx upstream, nginx auth_basic and nginx forward-auth run 2 worker processes; Caddy uses GOMAXPROCS=cores",
    ]
    print()
    print(f"fluxauth bench — {started:%Y-%m-%d %H:%M} UTC — medians of {args.repeats} interleaved runs")
    print(
        f"wrk -t{bench.load.threads} -c{bench.load.connections} -d{bench.load.duration:g}s on loopback,"
        f" GET of a {TILE_BYTES // 1024} KiB tile"
    )
    print()
    print(table(setups, caddy))
    print()
    for note in bench.notes:
        print(f"note: {note}")
    failed = [s.label for s in setups if not all(run.clean for run in s.runs)]
    if cold is not None:
        print()
        print(
            f"cold path: {cold['requests']} concurrent requests with a new token -> statuses {cold['statuses']},"
            f" argon2 verifications {cold['verifications']:.0f} (must be 1; took {cold['verification_seconds']:.3f} s)"
        )
        print(
            f"  time to first byte: first response {cold['first_byte_ms']:.0f} ms,"
            f" p50 {cold['p50_first_byte_ms']:.0f} ms, last {cold['max_first_byte_ms']:.0f} ms"
        )
    if attack is not None:
        print()
        print(
            f"attack: wrk with {args.attack_connections} connections floods wrong secrets for the real token id"
            f" while wrk measures cached legitimate traffic ({attack['target']}; medians of {attack['repetitions']})"
        )
        quiet = attack["quiet"]
        print(f"  quiet:            legit p99 {quiet['p99_ms']:7.2f} ms, {quiet['requests_per_second']:6.0f} req/s")
        for phase, what in (("burst", "fresh limiter window"), ("steady", "same window, later")):
            found, flood = attack[phase], attack[phase]["flood"]
            print(
                f"  attack, {phase + ':':8}  legit p99 {found['p99_ms']:7.2f} ms,"
                f" {found['requests_per_second']:6.0f} req/s"
                f" -> p99 {found['p99_ratio']:.2f}x quiet (goal <= 2x: {'met' if found['goal_met'] else 'NOT met'});"
                f" flood {flood['requests_per_second']:.0f} req/s, {flood['answered_401']:.0f} x 401,"
                f" {flood['answered_429']:.0f} x 429, {flood['verifications']:.0f} argon2 ({what})"
            )

    caddy_rate, caddy_p99 = caddy.median("requests_per_second"), caddy.median("p99_ms")
    report = {
        "started": started.isoformat(),
        "machine": {
            "cores": cores,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "nginx": _version(["nginx", "-v"]),
            "caddy": _version(["caddy", "version"]),
            "wrk": _version(["wrk", "--version"]),
        },
        "options": {k: v for k, v in vars(args).items() if k != "keep"},
        "tile": {"path": TILE_PATH, "bytes": TILE_BYTES},
        "setups": {
            s.key: {
                "label": s.label,
                "requests_per_second": s.median("requests_per_second"),
                "p50_ms": s.median("p50_ms"),
                "p99_ms": s.median("p99_ms"),
                "ratio_to_caddy": {
                    "requests_per_second": s.median("requests_per_second") / caddy_rate,
                    "p99": s.median("p99_ms") / caddy_p99,
                },
                "runs": [asdict(run) for run in s.runs],
            }
            for s in setups
        },
        "cold_path": cold,
        "attack": attack,
        "notes": bench.notes,
    }
    out = RESULTS / f"bench-{started:%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(f"written: {out.relative_to(ROOT)}")
    status = 0
    if cold is not None and not cold["ok"]:
        print("FAIL: the cold path did not verify exactly once, or not every answer was 200", file=sys.stderr)
        status = 1
    if failed:
        print(f"FAIL: answers other than 200 from {', '.join(failed)}", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
