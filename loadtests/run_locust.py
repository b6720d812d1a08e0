"""``make loadtest``: the Locust scenarios of ``locustfile.py`` against a real fluxauth, headless, bounded in time.

Makes a temporary store with the CLI (cheapest argon2 profile: many orgs and
keys, a public service, an expired key, a key to rotate), starts the demo
upstream and ``fluxauth serve`` on ephemeral loopback ports, runs Locust for
``--duration`` and prints its failures; exits non-zero if there were any.

``--scenario rotation`` runs the key-rotation scenario alone (``all``: with the
mix). ``--soak 30m`` runs the mix that long and samples fluxauth's resident
memory (VmRSS) and open file descriptors every ``--sample-every`` seconds,
printing start, end and maximum: both should stay flat.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from harness import (
    PYTHON,
    RESULTS,
    ROOT,
    Servers,
    clean_environment,
    free_port,
    open_fds,
    process_tree,
    rss_kib,
)

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
MIX = ("TileBrowser", "WmsClient", "EdrClient", "PublicReader", "BadCredentials")
SCENARIOS = {"mix": MIX, "rotation": ("KeyRotation",), "all": (*MIX, "KeyRotation")}
ORGS = 12
KEYS_PER_ORG = 4


def seconds(text: str) -> int:
    """Locust's duration syntax (``90s``, ``30m``, ``1h30m``) in seconds."""
    total, number = 0, ""
    for char in text.strip():
        if char.isdigit():
            number += char
        elif char in "hms" and number:
            total += int(number) * {"h": 3600, "m": 60, "s": 1}[char]
            number = ""
        else:
            raise argparse.ArgumentTypeError(f"bad duration {text!r}: e.g. 60s, 30m, 1h30m")
    return total + (int(number) if number else 0)


class Cli:
    """The ``fluxauth`` command line, called in this process (the same parser and output, no start-up per call)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __call__(self, *args: str) -> str:
        from fluxauth.cli.main import main

        saved = dict(os.environ)
        os.environ.update(self.env)
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                status = main(list(args))
        finally:
            os.environ.clear()
            os.environ.update(saved)
        if status != 0:
            raise RuntimeError(f"fluxauth {' '.join(args)} exited with {status}")
        return out.getvalue().strip()

    def key(self, org: str, name: str, *extra: str) -> dict[str, str]:
        issued = json.loads(self("keys", "create", org, name, "--json", *extra))
        return {"name": name, "token": issued["token"], "token_id": issued["token_id"]}


def make_world(cli: Cli) -> dict[str, object]:
    """Orgs with tiles, WMS and EDR, and keys of several kinds; a public org; a victim, an expired key, a rotor."""
    orgs = []
    for n in range(1, ORGS + 1):
        org = f"org{n:02d}"
        cli("orgs", "create", org)
        for protocol in ("tiles", "wms", "edr"):
            cli("compute", "enable", org, protocol)
        keys = [cli.key(org, f"reader{k}", "--permission", "read") for k in range(KEYS_PER_ORG - 1)]
        keys.append(cli.key(org, "writer", "--permission", "write"))
        orgs.append({"org": org, "keys": keys})
        # Grants that the scenarios do not use, so that principals are not all alike.
        cli.key(org, "era5-only", "--repo", "era5=read", "--expires-in", "90d")
    cli("orgs", "create", "open")
    cli("compute", "enable", "open", "tiles", "--is-public")
    cli("orgs", "create", "rot")
    cli("compute", "enable", "rot", "tiles")
    rotor = cli.key("rot", "rotor", "--permission", "read")
    victim = cli.key("org02", "victim", "--permission", "read")
    expired = cli.key("org03", "short-lived", "--permission", "read", "--expires-in", "1s")
    return {
        "orgs": orgs,
        "public_org": "open",
        "victim": {"org": "org02", "prefix": victim["token"][:-40]},
        "expired": {"org": "org03", "token": expired["token"]},
        "rotation": {"org": "rot", "name": "rotor", "token": rotor["token"]},
    }


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def fluxauth_metrics(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url + "/_fluxauth/metrics", timeout=10) as response:  # noqa: S310 (loopback)
        text: str = response.read().decode()
    wanted = ("fluxauth_decisions_total", "fluxauth_verifications_total", "fluxauth_upstream_errors_total")
    return "\n".join(line for line in text.splitlines() if line.startswith(wanted))


class Sampler:
    """VmRSS and open file descriptors of a server (and its worker processes), over time."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int, int]] = []
        self.started = time.monotonic()

    def sample(self) -> tuple[float, int, int]:
        pids = process_tree(self.pid)
        rss = sum(rss_kib(pid) for pid in pids)
        fds = sum(open_fds(pid) for pid in pids)
        found = (time.monotonic() - self.started, rss, fds)
        self.samples.append(found)
        return found

    def summary(self) -> dict[str, object]:
        rss = [s[1] for s in self.samples]
        fds = [s[2] for s in self.samples]
        return {
            "samples": len(self.samples),
            "rss_kib": {"start": rss[0], "end": rss[-1], "max": max(rss), "min": min(rss)},
            "open_fds": {"start": fds[0], "end": fds[-1], "max": max(fds), "min": min(fds)},
            "series": self.samples,
        }


def run_locust(
    args: argparse.Namespace, host: str, env: dict[str, str], prefix: Path, sampler: Sampler, duration: int
) -> int:
    classes: Sequence[str] = SCENARIOS[args.scenario]
    command = [PYTHON, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host]
    command += ["-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{duration}s", "--stop-timeout", "10"]
    command += ["--csv", str(prefix), "--only-summary", "--loglevel", "WARNING", *classes]
    with (prefix.parent / f"{prefix.name}-locust.log").open("w") as log:
        locust = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            next_sample = time.monotonic()
            while locust.poll() is None:
                if time.monotonic() >= next_sample:
                    at, rss, fds = sampler.sample()
                    if args.soak or args.verbose:
                        print(f"  t={at:6.0f}s  fluxauth VmRSS {rss / 1024:7.1f} MiB  open fds {fds}", flush=True)
                    next_sample += args.sample_every
                time.sleep(0.5)
        finally:
            if locust.poll() is None:
                locust.terminate()
                locust.wait(timeout=30)
    sampler.sample()
    return locust.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=seconds, default=seconds("60s"), help="how long (default 60s)")
    parser.add_argument("--soak", type=seconds, help="soak this long (e.g. 30m), sampling memory and fds")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="mix", help="mix (default), rotation, all")
    parser.add_argument("--users", type=int, default=40, help="simulated clients (default 40)")
    parser.add_argument("--spawn-rate", type=float, default=10)
    parser.add_argument("--workers", type=int, default=1, help="fluxauth workers (default 1)")
    parser.add_argument("--sample-every", type=float, default=None, help="seconds between samples (soak: 30)")
    parser.add_argument("--verbose", action="store_true", help="print every memory/fd sample")
    args = parser.parse_args(argv)
    duration = args.soak or args.duration
    if args.sample_every is None:
        args.sample_every = 30.0 if args.soak else 10.0

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC)
    label = "soak" if args.soak else args.scenario
    prefix = RESULTS / f"locust-{label}-{stamp:%Y%m%dT%H%M%SZ}"
    tmp = Path(tempfile.mkdtemp(prefix="fluxauth-locust-"))
    store_env = {
        "FLUXAUTH_STORE": str(tmp / "store.db"),
        "FLUXAUTH_ARGON2_PROFILE": "cheapest",
        "FLUXAUTH_LOG_LEVEL": "warning",
    }
    try:
        with Servers() as servers:
            print("making the store (CLI) ...", flush=True)
            world = make_world(Cli(store_env))
            (tmp / "world.json").write_text(json.dumps(world))
            upstream_port = free_port()
            serve_upstream = [PYTHON, "-m", "uvicorn", "fluxauth.demo.upstream:create_app", "--factory"]
            serve_upstream += ["--port", str(upstream_port), "--loop", "uvloop", "--http", "httptools"]
            serve_upstream += ["--log-level", "warning", "--no-access-log"]
            upstream = servers.start(
                "demo-upstream",
                serve_upstream,
                upstream_port,
                tmp / "upstream.log",
                clean_environment(),
            )
            upstream.wait_ready("/healthz")
            port = free_port()
            fluxauth = servers.start(
                "fluxauth",
                [PYTHON, "-m", "fluxauth", "serve", "--port", str(port), "--workers", str(args.workers)],
                port,
                tmp / "fluxauth.log",
                clean_environment(**store_env, FLUXAUTH_UPSTREAM=upstream.url, FLUXAUTH_TRUSTED_PROXIES="127.0.0.1"),
            )
            fluxauth.wait_ready("/_fluxauth/readyz")
            time.sleep(1)  # the expired key (1 s) has expired
            env = clean_environment(**store_env, FLUXAUTH_LOCUST_WORLD=str(tmp / "world.json"))
            print(
                f"locust: {args.users} users ({', '.join(SCENARIOS[args.scenario])}) for {duration}s"
                f" against fluxauth (pid {fluxauth.pid}, {args.workers} worker(s)) at {fluxauth.url}",
                flush=True,
            )
            sampler = Sampler(fluxauth.pid)
            code = run_locust(args, fluxauth.url, env, prefix, sampler, duration)
            metrics = fluxauth_metrics(fluxauth.url)
            alive = fluxauth.process.poll() is None
    except KeyboardInterrupt:
        print("interrupted; every server is stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summarize(args, prefix, code, sampler, metrics, alive, duration)


def summarize(
    args: argparse.Namespace, prefix: Path, code: int, sampler: Sampler, metrics: str, alive: bool, duration: int
) -> int:
    stats = read_csv(Path(f"{prefix}_stats.csv"))
    failures = read_csv(Path(f"{prefix}_failures.csv"))
    print()
    print(f"{'name':44} {'requests':>9} {'failures':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for row in stats:
        print(
            f"{row['Name'][:44]:44} {row['Request Count']:>9} {row['Failure Count']:>9}"
            f" {float(row['Requests/s']):8.1f} {row['50%']:>8} {row['99%']:>8}"
        )
    print()
    print("fluxauth's own counts:")
    print(metrics)
    summary = sampler.summary()
    rss, fds = summary["rss_kib"], summary["open_fds"]
    assert isinstance(rss, dict)
    assert isinstance(fds, dict)
    print()
    print(
        f"fluxauth over {duration}s ({summary['samples']} samples):"
        f" VmRSS start {rss['start'] / 1024:.1f} MiB, end {rss['end'] / 1024:.1f} MiB, max {rss['max'] / 1024:.1f} MiB;"
        f" open fds start {fds['start']}, end {fds['end']}, max {fds['max']}"
    )
    result = {
        "scenario": args.scenario,
        "soak": bool(args.soak),
        "duration_s": duration,
        "users": args.users,
        "locust_exit_code": code,
        "fluxauth_alive_at_end": alive,
        "stats": stats,
        "failures": failures,
        "process": summary,
    }
    Path(f"{prefix}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {prefix.relative_to(ROOT)}.json (and _stats.csv, _failures.csv, -locust.log)")
    if failures:
        print()
        print("FAILURES (unexpected answers):")
        for row in failures:
            print(f"  {row['Occurrences']:>6} x {row['Method']} {row['Name']}: {row['Error']}")
    if not alive:
        print("FAIL: fluxauth exited during the run")
    if failures or code != 0 or not alive:
        return 1
    print("no failures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
