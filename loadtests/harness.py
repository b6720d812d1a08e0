"""What the load scripts share: processes on ephemeral loopback ports, a fluxauth store, wrk and its output.

Every server runs as a subprocess in a session of its own, so that stopping it
also stops the workers it forked (uvicorn ``--workers``, nginx's workers).
Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "loadtests" / "results"
PYTHON = sys.executable


def free_port() -> int:
    """A port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def basic(username: str, password: str) -> str:
    """The value of an ``Authorization`` header for HTTP Basic."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without any ``FLUXAUTH_*`` of the caller's, plus ``extra``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("FLUXAUTH_")}
    env.update(extra)
    return env


class Server:
    """One server subprocess in its own session, logging to a file."""

    def __init__(self, name: str, args: Sequence[str], port: int, log: Path, env: Mapping[str, str] | None = None):
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                list(args),
                stdout=output,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, path: str = "/", timeout: float = 60.0) -> None:
        """Wait until ``path`` answers at all (any status); fail with the log if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=2):  # noqa: S310 (our own loopback URL)
                    return
            except urllib.error.HTTPError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not answer on {self.url}:\n{self.tail()}") from None
                time.sleep(0.05)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the whole session, then SIGKILL whatever is left after 10 s."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        # Workers may outlive their parent for a moment; the session id is the leader's pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


class Servers:
    """Every server started by a run, all stopped by ``close`` (also on Ctrl-C or SIGTERM)."""

    def __init__(self) -> None:
        self.running: list[Server] = []

    def start(
        self, name: str, args: Sequence[str], port: int, log: Path, env: Mapping[str, str] | None = None
    ) -> Server:
        server = Server(name, args, port, log, env)
        self.running.append(server)
        return server

    def stop(self, server: Server) -> None:
        server.stop()
        self.running.remove(server)

    def close(self) -> None:
        for server in reversed(self.running):
            server.stop()
        self.running.clear()

    def __enter__(self) -> Servers:
        # SIGTERM (a CI runner giving up, ``kill``) unwinds like Ctrl-C, so ``close`` runs.
        signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# -- fluxauth -------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """A key created through the CLI: its org, name, token and token id."""

    org: str
    name: str
    token: str
    token_id: str

    @property
    def authorization(self) -> str:
        return basic(self.org, self.token)


class FluxauthStore:
    """A SQLite store driven through the ``fluxauth`` command line, as an operator would."""

    def __init__(self, path: Path, *, argon2_profile: str | None = None) -> None:
        self.path = path
        extra = {"FLUXAUTH_STORE": str(path), "FLUXAUTH_LOG_LEVEL": "warning"}
        if argon2_profile is not None:
            extra["FLUXAUTH_ARGON2_PROFILE"] = argon2_profile
        self.env = clean_environment(**extra)

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [PYTHON, "-m", "fluxauth", *args], env=self.env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"fluxauth {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def create_key(self, org: str, name: str, *extra: str) -> Issued:
        found = json.loads(self.cli("keys", "create", org, name, "--json", *extra))
        return Issued(org, name, found["token"], found["token_id"])

    def serve(
        self, servers: Servers, name: str, log_dir: Path, *, upstream: str, workers: int = 1, **env: str
    ) -> Server:
        """``fluxauth serve`` on a port of its own, ready when it returns."""
        port = free_port()
        server = servers.start(
            name,
            [PYTHON, "-m", "fluxauth", "serve", "--port", str(port), "--workers", str(workers)],
            port,
            log_dir / f"{name}.log",
            {**self.env, "FLUXAUTH_UPSTREAM": upstream, **env},
        )
        server.wait_ready("/_fluxauth/readyz")
        return server


def metric(url: str, name: str, labels: str = "") -> float:
    """One sample from fluxauth's ``/_fluxauth/metrics`` (0 when absent)."""
    with urllib.request.urlopen(url + "/_fluxauth/metrics", timeout=10) as response:  # noqa: S310 (loopback)
        text = response.read().decode()
    found = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc), for sampling memory of a server with workers."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(children.get(current, []))
    return found


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` (VmRSS), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- wrk --------------------------------------------------------------------------


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run reports: rate, latency percentiles (ms) and errors."""

    requests_per_second: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    timeouts: int

    @property
    def clean(self) -> bool:
        return self.non_2xx == 0 and self.socket_errors == 0


def _duration_ms(text: str) -> float:
    found = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    if found is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(found.group(1)) * _UNITS_MS[found.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """Read wrk's ``--latency`` report."""
    percentiles = {int(p): _duration_ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", output, re.M)}
    rate = re.search(r"^Requests/sec:\s+([0-9.]+)", output, re.M)
    total = re.search(r"^\s+(\d+) requests in", output, re.M)
    if rate is None or total is None or len(percentiles) != 4:
        raise ValueError(f"cannot read wrk's report:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    counts = [int(n) for n in errors.groups()] if errors else [0, 0, 0, 0]
    return WrkResult(
        requests_per_second=float(rate.group(1)),
        p50_ms=percentiles[50],
        p75_ms=percentiles[75],
        p90_ms=percentiles[90],
        p99_ms=percentiles[99],
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(counts),
        timeouts=counts[3],
    )


@dataclass(frozen=True)
class Load:
    """How wrk drives a server: open connections, seconds, threads."""

    connections: int
    duration: float
    threads: int = 2
    timeout: str = "30s"


def wrk_command(url: str, load: Load, *, headers: Sequence[str] = (), script: Path | None = None) -> list[str]:
    args = [
        "wrk",
        f"-t{min(load.threads, load.connections)}",
        f"-c{load.connections}",
        f"-d{load.duration:g}s",
        f"--timeout={load.timeout}",
        "--latency",
    ]
    for header in headers:
        args += ["-H", header]
    if script is not None:
        args += ["-s", str(script)]
    return [*args, url]


def run_wrk(url: str, load: Load, *, headers: Sequence[str] = (), script: Path | None = None) -> WrkResult:
    """Run wrk to completion and parse its report."""
    done = subprocess.run(
        wrk_command(url, load, headers=headers, script=script), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parse_wrk(done.stdout)


# -- system packages --------------------------------------------------------------------


def ensure_debian_packages(commands: Mapping[str, str]) -> None:
    """Install the Debian package for each missing command (``{command: package}``); root only."""
    missing = sorted({package for command, package in commands.items() if shutil.which(command) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"missing {', '.join(missing)}: apt-get install {' '.join(missing)} (or run as root)")
    print(f"installing {' '.join(missing)} from Debian", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, stdout=subprocess.DEVNULL)


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    """Print how long a block took (on stderr, so that the table on stdout stays clean)."""
    started = time.monotonic()
    yield
    print(f"  {label}: {time.monotonic() - started:.1f}s", file=sys.stderr)
