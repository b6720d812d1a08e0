"""The gate: the decision from memory alone, and the verification pool's size and priority."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os

import pytest

from fluxauth.auth.gate import VERIFY_NICE, Gate, verify_threads
from fluxauth.clock import FakeClock
from fluxauth.config.settings import Settings
from fluxauth.decision.policy import Failure, Outcome
from fluxauth.decision.request import RequestHead
from fluxauth.manage.admin import Admin
from fluxauth.store.sqlite import SQLiteStore

TILE = b"/v1/services/tiles/acme/era5/main/tiles/WebMercatorQuad/0/0/0.png"


def head(token: str | None = None, *, path: bytes = TILE, method: str = "GET") -> RequestHead:
    request = RequestHead(method, path, b"", peer="192.0.2.7")
    request.add_headers([(b"host", b"tiles.example.org")])
    if token is not None:
        request.add_headers([(b"authorization", b"Basic " + base64.b64encode(f"acme:{token}".encode()))])
    return request


@pytest.fixture
def token(token: str, admin: Admin) -> str:
    """conftest's org and read key (``make_acme``), its WMS made public."""
    admin.enable_service("acme", "wms", is_public=True)
    return token


def with_gate(settings: Settings, store_path: str, clock: FakeClock, test: object) -> None:
    async def run() -> None:
        gate = Gate(settings, SQLiteStore(store_path), clock=clock)
        await gate.start()
        try:
            await test(gate)  # type: ignore[operator]
        finally:
            await gate.stop()

    asyncio.run(run())


def test_gate_decide_now_answers_only_from_memory(
    settings: Settings, store_path: str, clock: FakeClock, token: str
) -> None:
    """``decide_now`` is ``None`` until the policy and the credential are cached, then the same as ``check``."""

    async def test(gate: Gate) -> None:
        assert gate.decide_now(head(token)) is None  # the org's policy is not loaded yet
        await gate.org_policy("acme")
        assert gate.decide_now(head(token)) is None  # the credential is not verified yet
        verifications = gate.stats.verifications
        checked = await gate.check(head(token))
        assert checked.outcome is Outcome.FORWARD
        now = gate.decide_now(head(token))
        assert now == checked
        assert gate.stats.verifications == verifications + 1  # decide_now verified nothing

    with_gate(settings, store_path, clock, test)


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (head(path=b"/v1/services/tiles/acme/era5/main/a/%2e%2e/b"), 400),  # no credentials needed to refuse it
        (head(path=b"/elsewhere"), 404),
        (head(path=b"/v1/services/wms/acme/gfs/main/wms"), 200),  # public: anonymous
    ],
)
def test_gate_decide_now_needs_no_credentials_where_none_count(
    settings: Settings, store_path: str, clock: FakeClock, token: str, request_head: RequestHead, status: int
) -> None:
    """Paths refused on sight and public services are decided from memory without any credential."""

    async def test(gate: Gate) -> None:
        await gate.org_policy("acme")
        decision = gate.decide_now(request_head)
        assert decision is not None
        assert decision.status == status

    with_gate(settings, store_path, clock, test)


def test_gate_decide_now_leaves_refusals_of_credentials_to_check(
    settings: Settings, store_path: str, clock: FakeClock, token: str
) -> None:
    """Missing, malformed or wrong credentials are ``None`` from memory: ``check`` answers and counts them."""

    async def test(gate: Gate) -> None:
        await gate.org_policy("acme")
        await gate.check(head(token))
        assert gate.decide_now(head()) is None
        assert gate.decide_now(head("not-a-token")) is None
        assert gate.decide_now(head(token[:-1] + "A")) is None
        refused = await gate.check(head(token[:-1] + "A"))
        assert refused.failure is Failure.BAD_SECRET

    with_gate(settings, store_path, clock, test)


def test_gate_verification_threads_yield_to_the_event_loop(
    settings: Settings, store_path: str, clock: FakeClock
) -> None:
    """argon2 runs at a lower priority (nice) than the event loop: a burst of guesses cannot starve cached traffic."""

    async def test(gate: Gate) -> None:
        loop = asyncio.get_running_loop()
        assert gate._verify_pool is not None
        in_pool = await loop.run_in_executor(gate._verify_pool, os.getpriority, os.PRIO_PROCESS, 0)
        assert in_pool == os.getpriority(os.PRIO_PROCESS, 0) + VERIFY_NICE or in_pool == 19
        assert os.getpriority(os.PRIO_PROCESS, 0) == here  # the event loop's thread is untouched

    here = os.getpriority(os.PRIO_PROCESS, 0)
    with_gate(settings, store_path, clock, test)


@pytest.mark.parametrize(
    ("profile", "configured", "cores", "expected"),
    [
        ("rfc9106-low-memory", 0, 2, 1),  # 4 lanes: one verification already fills 2 cores
        ("rfc9106-low-memory", 0, 16, 4),
        ("rfc9106-high-memory", 0, 8, 2),
        ("cheapest", 0, 8, 8),  # 1 lane
        ("rfc9106-low-memory", 3, 2, 3),  # as configured
    ],
)
def test_gate_verify_threads_default_to_cores_over_lanes(
    monkeypatch: pytest.MonkeyPatch, profile: str, configured: int, cores: int, expected: int
) -> None:
    """``verify_threads = 0`` runs as many verifications at once as the cores hold lanes of the profile."""
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    settings = dataclasses.replace(Settings(), argon2_profile=profile, verify_threads=configured)  # type: ignore[arg-type]
    assert verify_threads(settings) == expected
