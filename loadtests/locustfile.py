"""Locust scenarios for fluxauth: what a fleet of map clients, scripts and strangers do to it.

Run through ``loadtests/run_locust.py`` (``make loadtest``), which makes a store
of many orgs and keys with the CLI, starts the demo upstream and ``fluxauth
serve``, and points ``$FLUXAUTH_LOCUST_WORLD`` at a JSON file describing them.

Every user sends ``X-Forwarded-For`` with an address of its own from
198.18.0.0/15 (RFC 2544's benchmarking range; a header only, never dialled):
run_locust.py trusts 127.0.0.1 as a proxy, so the rate limiter sees many
clients, as behind a real load balancer, rather than one.

Expected refusals are counted as successes; anything else (a 5xx, a refusal
of good credentials, a grant of bad ones) is a failure, and the run fails.

User classes:

- ``TileBrowser``: a web map panning and zooming a tile pyramid (z/x/y);
- ``WmsClient``: WMS 1.3.0 GetCapabilities and GetMap under ``wms``;
- ``EdrClient``: EDR position queries under ``edr``; the demo upstream has no
  EDR, so the right answer is *its* 404, forwarded (no ``detail``), not a
  refusal by fluxauth;
- ``PublicReader``: tiles of a public service, without credentials;
- ``BadCredentials``: unknown tokens, wrong secrets for a real token id, an
  expired key, the wrong org, garbage: 401, or 429 with ``Retry-After``;
- ``KeyRotation`` (a class of its own, left out of the default mix; run it
  with ``run_locust.py --scenario rotation``, or ``all``): rotates a key with a 2 s grace while requests flow; the old
  token works until the grace ends and never after, the new one from the start,
  and nothing is 5xx.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import random
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, constant, task

WORLD: dict[str, Any] = json.loads(Path(os.environ["FLUXAUTH_LOCUST_WORLD"]).read_text())
TILE = "/v1/services/tiles/{org}/era5/main/surface/tiles/WebMercatorQuad/{z}/{x}/{y}.png"
WMS = "/v1/services/wms/{org}/gfs/main/wms"
EDR = "/v1/services/edr/{org}/gfs/main/solar/edr/position"
MAX_ZOOM = 10
GRACE_SECONDS = 2.0
PAUSE_SECONDS = 0.01  # between the rotation user's requests: a steady flow, not a flood
_addresses = itertools.count(1)


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def client_address() -> str:
    """A made-up client address for ``X-Forwarded-For`` (198.18.0.0/15), a new one each call."""
    n = next(_addresses)
    return f"198.{18 + (n >> 16) % 2}.{(n >> 8) % 256}.{n % 256}"


def refusal_detail(body: str) -> str | None:
    """The ``detail`` of a fluxauth refusal (every one has it), or None for an upstream's answer."""
    try:
        found = json.loads(body)
    except ValueError:
        return None
    return found.get("detail") if isinstance(found, dict) else None


class FluxauthUser(FastHttpUser):
    """A client with a key of one org (picked at random) and an address of its own."""

    abstract = True
    wait_time = between(0.2, 1.5)

    def on_start(self) -> None:
        org = random.choice(WORLD["orgs"])
        key = random.choice(org["keys"])
        self.org: str = org["org"]
        self.headers = {"Authorization": basic(self.org, key["token"]), "X-Forwarded-For": client_address()}

    def fetch(self, path: str, name: str, *, expect: int = 200, content_type: str | None = None) -> None:
        """GET ``path``; a success only with status ``expect`` (and ``content_type``, if given)."""
        with self.client.get(path, name=name, headers=self.headers, catch_response=True) as response:
            if response.status_code != expect:
                response.failure(f"{response.status_code}, expected {expect}: {(response.text or '')[:120]}")
            elif content_type and not (response.headers.get("content-type") or "").startswith(content_type):
                response.failure(f"content-type {response.headers.get('content-type')!r}, expected {content_type}")
            else:
                response.success()


class TileBrowser(FluxauthUser):
    """A web map: a 3 x 3 viewport of tiles, then a pan, a zoom in or a zoom out."""

    weight = 6

    def on_start(self) -> None:
        super().on_start()
        self.z, self.x, self.y = 0, 0, 0

    def move(self) -> None:
        step = random.random()
        if step < 0.4 and self.z < MAX_ZOOM:
            self.z, self.x, self.y = self.z + 1, 2 * self.x + random.randint(0, 1), 2 * self.y + random.randint(0, 1)
        elif step < 0.6 and self.z > 0:
            self.z, self.x, self.y = self.z - 1, self.x // 2, self.y // 2
        else:
            size = 2**self.z
            self.x = (self.x + random.randint(-1, 1)) % size
            self.y = min(max(self.y + random.randint(-1, 1), 0), size - 1)

    @task
    def viewport(self) -> None:
        self.move()
        size = 2**self.z
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                y = self.y + dy
                if 0 <= y < size:
                    path = TILE.format(org=self.org, z=self.z, x=(self.x + dx) % size, y=y)
                    self.fetch(path, f"tile z{self.z}", content_type="image/png")


class WmsClient(FluxauthUser):
    """A desktop GIS: capabilities now and then, maps of random extents."""

    weight = 2

    @task(1)
    def capabilities(self) -> None:
        query = "?service=WMS&version=1.3.0&request=GetCapabilities"
        self.fetch(WMS.format(org=self.org) + query, "wms GetCapabilities", content_type="text/xml")

    @task(5)
    def get_map(self) -> None:
        lon, lat = random.uniform(-180, 150), random.uniform(-90, 60)
        span = random.choice((30, 10, 1))
        bbox = f"{lat:.3f},{lon:.3f},{lat + span:.3f},{lon + span:.3f}"  # WMS 1.3.0 EPSG:4326: lat,lon
        query = (
            f"?service=WMS&version=1.3.0&request=GetMap&layers={random.choice(('t2m', 'precip'))}"
            f"&styles=&crs=EPSG:4326&bbox={bbox}&width=256&height=256&format=image/png"
        )
        self.fetch(WMS.format(org=self.org) + query, "wms GetMap", content_type="image/png")


class EdrClient(FluxauthUser):
    """A script asking for time series at points; the demo upstream answers 404 itself."""

    weight = 2

    @task
    def position(self) -> None:
        lon, lat = random.uniform(-180, 180), random.uniform(-90, 90)
        path = EDR.format(org=self.org) + f"?coords=POINT({lon:.2f}%20{lat:.2f})&parameter-name=t2m"
        with self.client.get(path, name="edr position", headers=self.headers, catch_response=True) as response:
            detail = refusal_detail(response.text or "")
            if response.status_code == 404 and detail is None:
                response.success()  # the upstream's own 404, forwarded
            else:
                response.failure(f"{response.status_code} (fluxauth refusal: {detail!r}), expected the upstream's 404")


class PublicReader(FluxauthUser):
    """Tiles of a public service, without credentials."""

    weight = 2

    def on_start(self) -> None:
        self.org = WORLD["public_org"]
        self.headers = {"X-Forwarded-For": client_address()}

    @task
    def tile(self) -> None:
        z = random.randint(0, 6)
        path = TILE.format(org=self.org, z=z, x=random.randrange(2**z), y=random.randrange(2**z))
        self.fetch(path, "public tile", content_type="image/png")


class BadCredentials(FluxauthUser):
    """Credentials that must never work: 401, or 429 with Retry-After once this client has failed too often."""

    weight = 1
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.address = client_address()

    def refused(
        self, name: str, org: str, authorization: str | None, *, statuses: tuple[int, ...] = (401, 429)
    ) -> None:
        headers = {"X-Forwarded-For": self.address}
        if authorization is not None:
            headers["Authorization"] = authorization
        path = TILE.format(org=org, z=2, x=1, y=1)
        with self.client.get(path, name=name, headers=headers, catch_response=True) as response:
            status = response.status_code
            if status not in statuses:
                response.failure(f"{status}, expected one of {statuses}")
            elif status == 429 and not response.headers.get("retry-after"):
                response.failure("429 without Retry-After")
            elif status == 401 and "Basic" not in (response.headers.get("www-authenticate") or ""):
                response.failure("401 without a Basic challenge")
            else:
                response.success()

    @task(3)
    def unknown_token(self) -> None:
        org = random.choice(WORLD["orgs"])["org"]
        token = f"ema_{random.getrandbits(64):016x}_{_secret()}"
        self.refused("bad: unknown token", org, basic(org, token))

    @task(3)
    def wrong_secret(self) -> None:
        victim = WORLD["victim"]
        self.refused(
            "bad: wrong secret, real token id", victim["org"], basic(victim["org"], victim["prefix"] + _secret())
        )

    @task(2)
    def expired(self) -> None:
        expired = WORLD["expired"]
        self.refused("bad: expired key", expired["org"], basic(expired["org"], expired["token"]))

    @task(1)
    def wrong_org(self) -> None:
        orgs = WORLD["orgs"]
        owner, other = random.sample(orgs, 2)
        self.refused("bad: another org's key", other["org"], basic(other["org"], owner["keys"][0]["token"]))

    @task(1)
    def garbage(self) -> None:
        org = random.choice(WORLD["orgs"])["org"]
        self.refused("bad: not a token", org, basic(org, "hunter2"))

    @task(1)
    def none(self) -> None:
        self.refused("bad: no credentials", random.choice(WORLD["orgs"])["org"], None, statuses=(401,))


def _secret() -> str:
    return "".join(random.choice(string.ascii_letters + string.digits + "_-") for _ in range(40))


class KeyRotation(FastHttpUser):
    """Rotates one key with a 2 s grace, over and over, while both tokens are used.

    Per cycle: the current token alone for a moment (must be 200), then
    ``fluxauth keys rotate --grace 2s`` through the CLI, then both tokens until
    1 s past the grace end. The grace end lies between the CLI's start + 2 s and
    its return + 2 s: the old token must be 200 for requests answered before the
    first, and refused for requests sent after the second; in between, either.
    The new token must be 200 from the start. Nothing may be 5xx.

    Each cycle sends from a new client address, so that the old token's
    refusals never rate-limit the new token's first verification.
    """

    fixed_count = 1
    wait_time = constant(0)

    def on_start(self) -> None:
        rotation = WORLD["rotation"]
        self.org: str = rotation["org"]
        self.name: str = rotation["name"]
        self.token: str = rotation["token"]

    def get(self, token: str, name: str, address: str) -> tuple[float, float, Any]:
        headers = {"Authorization": basic(self.org, token), "X-Forwarded-For": address}
        path = TILE.format(org=self.org, z=1, x=0, y=1)
        started = time.time()
        context = self.client.get(path, name=name, headers=headers, catch_response=True)
        return started, time.time(), context

    def rotate(self) -> str:
        """The new token, from ``fluxauth keys rotate`` (the CLI, as an operator would)."""
        done = subprocess.run(
            [sys.executable, "-m", "fluxauth", "keys", "rotate", self.org, self.name, "--grace", "2s", "--json"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"keys rotate failed: {done.stderr.strip()}")
        token: str = json.loads(done.stdout)["token"]
        return token

    @task
    def rotate_while_serving(self) -> None:
        address = client_address()
        old = self.token
        until = time.time() + 0.5
        while time.time() < until:
            time.sleep(PAUSE_SECONDS)
            started, ended, context = self.get(old, "rotation: token before rotation", address)
            with context as response:
                if response.status_code == 200:
                    response.success()
                else:
                    response.failure(f"{response.status_code} for a valid token")
        cli_started = time.time()
        new = self.rotate()
        cli_returned = time.time()
        # One row in Locust's table per rotation, timed like a request.
        self.environment.events.request.fire(
            request_type="CLI",
            name="rotation: keys rotate --grace 2s",
            response_time=(cli_returned - cli_started) * 1000,
            response_length=0,
            exception=None,
            context={},
        )
        self.token = new
        surely_valid_until = cli_started + GRACE_SECONDS
        surely_revoked_from = cli_returned + GRACE_SECONDS
        while time.time() < surely_revoked_from + 1.0:
            time.sleep(PAUSE_SECONDS)
            started, ended, context = self.get(new, "rotation: new token", address)
            with context as response:
                if response.status_code == 200:
                    response.success()
                else:
                    response.failure(f"new token refused: {response.status_code}")
            if started > surely_revoked_from + 0.5:
                continue  # enough refusals of the old token seen for this cycle
            started, ended, context = self.get(old, "rotation: old token", address)
            allowed: tuple[int, ...]
            if ended < surely_valid_until:
                name, allowed = "rotation: old token, in grace", (200,)
            elif started > surely_revoked_from:
                name, allowed = "rotation: old token, after grace", (401, 429)
            else:
                name, allowed = "rotation: old token, at the grace end", (200, 401, 429)
            context.request_meta["name"] = name  # known only once the request has been timed
            with context as response:
                if response.status_code in allowed:
                    response.success()
                else:
                    response.failure(f"old token: {response.status_code}, expected one of {allowed}")
