"""Where a cached request's time goes: py-spy samples ``fluxauth serve`` while wrk drives the cached path.

Same setup as ``bench.py`` (nginx upstream with a 12 KiB tile, SQLite store made
with the CLI, default argon2 profile, one worker), then
``py-spy record --threads --nolineno --format raw`` for ``--duration`` seconds
while wrk runs. Only the event loop's thread is counted: the store and argon2
threads sleep on the cached path (py-spy's idle detection miscounts them).

Prints the functions with the most self time, the inclusive share of the
hot-path steps, and a partition of every sample into one bucket (our code by
step, uvicorn/httptools, the event loop). The raw collapsed stacks
are kept in ``loadtests/results/`` (for flamegraph.pl or speedscope).

Needs py-spy (``.venv/bin/pip install py-spy``); run as root or with ptrace allowed.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from bench import TILE_PATH, Bench
from bench import parse_args as bench_args
from harness import PYTHON, RESULTS, ROOT, Load, Servers, ensure_debian_packages, wrk_command

# Hot-path steps whose inclusive share is reported, as "function (file" prefixes of py-spy frames.
STEPS = (
    ("HotPath.serve (fluxauth/server/hotpath.py", "hot path: the request, from its head to the upstream write"),
    ("Gate.decide_now (fluxauth/auth/gate.py", "Gate.decide_now (decision from memory)"),
    ("parse_target (fluxauth/decision/target.py", "parse_target"),
    ("split_basic (fluxauth/decision/credentials.py", "split_basic"),
    ("CacheKeys.__call__ (fluxauth/auth/cache.py", "cache key (HMAC-SHA256)"),
    ("CredentialCache.get (fluxauth/auth/cache.py", "CredentialCache.get"),
    ("decide (fluxauth/decision/policy.py", "policy.decide"),
    ("Forwarder.request_head (fluxauth/proxy/forward.py", "Forwarder.request_head (the upstream's request)"),
    ("UpstreamPool.send_to (fluxauth/upstream/pool.py", "UpstreamPool.send_to (incl. the write to the upstream)"),
    ("Connection.data_received (fluxauth/upstream/pool.py", "upstream response: parse and relay"),
    ("Splice.upstream_head (fluxauth/server/hotpath.py", "Splice.upstream_head (response headers)"),
    ("Splice.upstream_body (fluxauth/server/hotpath.py", "Splice.upstream_body (incl. the write to the client)"),
    ("upstream_response_headers (fluxauth/decision/headers.py", "upstream_response_headers"),
    ("FluxAuthApp.http (fluxauth/proxy/app.py", "ASGI path (requests the hot path left)"),
    ("HttpToolsProtocol.data_received (uvicorn/", "uvicorn/httptools: the client's bytes, parsed"),
    ("HttpToolsProtocol.on_headers_complete (uvicorn/", "uvicorn: scope and cycle of a request"),
)

# Buckets, by file: each sample goes to the bucket of its leaf-most frame that has one.
FLUXAUTH_BUCKETS = (
    ("fluxauth/decision/target.py", "fluxauth: parse_target / check_query"),
    ("fluxauth/decision/credentials.py", "fluxauth: Basic credentials, token parse"),
    ("fluxauth/decision/tokens.py", "fluxauth: Basic credentials, token parse"),
    ("fluxauth/auth/cache.py", "fluxauth: cache key (HMAC) and L1 lookup"),
    ("fluxauth/decision/policy.py", "fluxauth: policy.decide"),
    ("fluxauth/auth/ratelimit.py", "fluxauth: client address, rate limiter"),
    ("fluxauth/decision/proxies.py", "fluxauth: client address, rate limiter"),
    ("fluxauth/decision/request.py", "fluxauth: RequestHead"),
    ("fluxauth/decision/hosts.py", "fluxauth: RequestHead"),
    ("fluxauth/decision/headers.py", "fluxauth: upstream request and response headers"),
    ("fluxauth/decision/cors.py", "fluxauth: CORS"),
    ("fluxauth/auth/gate.py", "fluxauth: Gate (glue)"),
    ("fluxauth/proxy/forward.py", "fluxauth: upstream request and response headers"),
    ("fluxauth/server/hotpath.py", "fluxauth: hot path relay (incl. client writes)"),
    ("fluxauth/upstream/pool.py", "fluxauth: upstream pool (incl. upstream writes, response parse)"),
    ("fluxauth/proxy/app.py", "fluxauth: app.http (glue)"),
    ("fluxauth/server/protocol.py", "uvicorn/httptools server"),
    ("fluxauth/", "fluxauth: other"),
    ("uvicorn/", "uvicorn/httptools server"),
    ("cachetools/", "fluxauth: cache key (HMAC) and L1 lookup"),
)
LOOP_BUCKET = "event loop (uvloop/asyncio: socket I/O, scheduling)"
# Frames that only start the server: time under them and nothing else is the event loop's own.
OUTER_FILES = (
    "uvicorn/main.py",
    "uvicorn/server.py",
    "uvicorn/_compat.py",
    "fluxauth/cli/main.py",
    "fluxauth/__main__.py",
)


def frame_file(frame: str) -> str:
    """``"Gate.check (fluxauth/auth/gate.py)"`` -> ``"fluxauth/auth/gate.py"``."""
    return frame.rpartition("(")[2].rstrip(")")


def owner(frames: list[str]) -> tuple[str, str]:
    """The bucket of a stack and the frame that decided it (the leaf-most one of a known file)."""
    for frame in reversed(frames):
        path = frame_file(frame)
        if path in OUTER_FILES:
            break
        for prefix, name in FLUXAUTH_BUCKETS:
            if path.startswith(prefix):
                return name, frame
    return LOOP_BUCKET, frames[-1]


def bucket(frames: list[str]) -> str:
    return owner(frames)[0]


def read_samples(path: Path, thread: str = "MainThread") -> list[tuple[list[str], int]]:
    """The collapsed stacks of ``thread`` (py-spy ``--threads --format raw``), without the thread frame."""
    samples = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if frames and frames[0].startswith("thread ") and frames[0].endswith(thread):
            samples.append((frames[1:], int(count)))
    return samples


def percentages(counts: Iterable[tuple[str, int]], total: int, limit: int) -> list[str]:
    return [f"  {100 * n / total:5.1f}%  {name}" for name, n in list(counts)[:limit]]


def report(samples: list[tuple[list[str], int]], top: int = 25) -> str:
    total = sum(n for _, n in samples)
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    within: dict[str, Counter[str]] = {}
    for frames, n in samples:
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
        name, frame = owner(frames)
        buckets[name] += n
        leaf = frames[-1]
        within.setdefault(name, Counter())[frame if frame == leaf else f"{frame} -> {leaf}"] += n
    steps: list[tuple[str, int]] = []
    for prefix, label in STEPS:
        steps.append((label, sum(n for frame, n in inclusive.items() if frame.startswith(prefix))))
    lines = [f"event-loop thread: {total} samples", "", "partition of all samples (each counted once):"]
    for name, n in buckets.most_common():
        lines.append(f"  {100 * n / total:5.1f}%  {name}")
        lines += ["    " + line for line in percentages(within[name].most_common(), total, 4)]
    lines += ["", "hot-path steps, inclusive (nested steps overlap):"]
    lines += percentages(steps, total, 50)
    lines += ["", f"top {top} functions by self time:"]
    lines += percentages(own.most_common(), total, top)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=20, help="seconds sampled (default 20)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="also sample C frames (py-spy --native)")
    parser.add_argument("--raw", type=Path, help="only analyse this collapsed-stack file, run nothing")
    args = parser.parse_args(argv)
    if args.raw:
        print(report(read_samples(args.raw)))
        return 0
    py_spy = Path(PYTHON).with_name("py-spy")
    if not py_spy.exists():
        print(f"py-spy is missing: {py_spy.parent / 'pip'} install py-spy", file=sys.stderr)
        return 2
    ensure_debian_packages({"wrk": "wrk", "nginx": "nginx-light"})
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="fluxauth-profile-"))
    tmp.chmod(0o755)
    stamp = datetime.datetime.now(datetime.UTC)
    out = RESULTS / f"profile-{stamp:%Y%m%dT%H%M%SZ}.txt"
    try:
        with Servers() as servers:
            bench = Bench(bench_args(["--connections", str(args.connections)]), tmp, servers)
            bench.start_upstream()
            bench.create_key()
            server = bench.start_fluxauth("fluxauth-profiled", 1)
            url = server.url + TILE_PATH
            load = Load(args.connections, args.duration + 4)
            bench.check_url(url)
            wrk = subprocess.Popen(wrk_command(url, load, headers=bench.headers), stdout=subprocess.PIPE, text=True)
            time.sleep(2)
            record = [str(py_spy), "record", "--pid", str(server.pid), "--duration", f"{args.duration:g}"]
            record += ["--rate", str(args.rate), "--threads", "--nolineno", "--format", "raw", "-o", str(out)]
            if args.native:
                record.append("--native")
            subprocess.run(record, check=True, capture_output=True)
            output, _ = wrk.communicate(timeout=args.duration + 60)
    except KeyboardInterrupt:
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(next(line for line in output.splitlines() if line.startswith("Requests/sec")).strip())
    print(report(read_samples(out)))
    print(f"\ncollapsed stacks: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
