"""The gate: the decision from memory alone, and the verification pool's size and priority."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os

import pytest

from fluxauth.auth.gate import Gate
from fluxauth.auth.verifier import VERIFY_NICE, verify_threads
from fluxauth.clock import FakeClock
from fluxauth.config.settings import Settings
from fluxauth.decision.policy import Failure, Outcome
from fluxauth.decision.request import RequestHead
from fluxauth.manage.admin import Admin
from fluxauth.store.sqlite import SQLiteStore
from tests.support.clients import wrong_secret

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
        assert gate.decide_now(head(wrong_secret(token))) is None
        refused = await gate.check(head(wrong_secret(token)))
        assert refused.failure is Failure.BAD_SECRET

    with_gate(settings, store_path, clock, test)


def test_gate_verification_threads_yield_to_the_event_loop(
    settings: Settings, store_path: str, clock: FakeClock
) -> None:
    """argon2 runs at a lower priority (nice) than the event loop: a burst of guesses cannot starve cached traffic."""

    async def test(gate: Gate) -> None:
        assert gate.verifier is not None
        in_pool = await gate.verifier.call(os.getpriority, os.PRIO_PROCESS, 0)
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


# -- failures remembered -------------------------------------------------------------


def test_gate_remembers_a_revoked_token_instead_of_verifying_it_again(
    settings: Settings, store_path: str, clock: FakeClock, token: str, admin: Admin
) -> None:
    """A token rotated out (a dashboard nobody updated) costs one verification, then a lookup each time; still 401.

    Defence: ``Gate._failed``, under the credential's HMAC (never the token).
    Without it every repeat is a full argon2 verification (0.4-0.8 s here).
    """

    async def test(gate: Gate) -> None:
        first = await gate.check(head(token))
        assert first.outcome is Outcome.FORWARD
        admin.rotate_key("acme", "maps", grace=0)
        await gate.poll_changes()
        verifications = gate.stats.verifications
        answers = [await gate.check(head(token)) for _ in range(5)]
        assert {answer.failure for answer in answers} == {Failure.REVOKED}
        assert gate.stats.verifications == verifications + 1
        assert gate.stats.failed_hits == 4
        assert token.encode() not in repr(dict(gate._failed)).encode()

    with_gate(settings, store_path, clock, test)


def test_gate_unknown_and_wrong_tokens_are_remembered_alike(
    settings: Settings, store_path: str, clock: FakeClock, token: str
) -> None:
    """An unknown token id and a wrong secret for a real one: the same refusal and counts, first and on every repeat."""

    async def test(gate: Gate) -> None:
        unknown = "ema_0123456789abcdef_" + "A" * 40
        for password in (unknown, wrong_secret(token)):
            before = (gate.stats.verifications, gate.stats.failed_hits)
            answers = [await gate.check(head(password)) for _ in range(3)]
            assert [(a.status, a.error, a.detail) for a in answers] == [
                (401, "unauthorized", "the credentials are not valid")
            ] * 3
            assert (gate.stats.verifications, gate.stats.failed_hits) == (before[0] + 1, before[1] + 2)

    with_gate(settings, store_path, clock, test)


def test_gate_a_change_makes_every_remembered_failure_be_verified_again(
    settings: Settings, store_path: str, clock: FakeClock, token: str, admin: Admin
) -> None:
    """A key that expired is remembered so until a change: rotated with more months, its token works again.

    ``rotate --extend-months 1 --grace 2h`` moves the key's expiry on and
    leaves its old token two hours of grace: a failure remembered past that
    change would refuse a token that is valid. Defence: ``Gate.apply`` empties
    the memory on every change.
    """

    async def test(gate: Gate) -> None:
        assert (await gate.check(head(token))).outcome is Outcome.FORWARD
        clock.advance(366 * 86400)  # past the key's expiry (365 days), and every cache entry's
        assert (await gate.check(head(token))).failure is Failure.EXPIRED
        assert (await gate.check(head(token))).failure is Failure.EXPIRED
        assert gate.stats.failed_hits == 1
        admin.rotate_key("acme", "maps", grace=7200, extend_months=1)
        await gate.poll_changes()
        assert (await gate.check(head(token))).outcome is Outcome.FORWARD

    with_gate(settings, store_path, clock, test)


def test_gate_a_verification_overtaken_by_a_change_remembers_nothing(
    settings: Settings, store_path: str, clock: FakeClock, token: str, admin: Admin
) -> None:
    """A failure read before a change lands is not remembered: it may predate what the change did."""

    async def test(gate: Gate) -> None:
        await gate.org_policy("acme")
        unknown = "ema_0123456789abcdef_" + "A" * 40
        flight = asyncio.ensure_future(gate.check(head(unknown)))
        await asyncio.sleep(0)  # the verification begins: its store read is in a thread now
        assert gate._verifications
        admin.create_org("other")  # any change
        await gate.poll_changes()
        assert (await flight).failure is Failure.UNKNOWN_TOKEN
        verifications = gate.stats.verifications
        assert (await gate.check(head(unknown))).failure is Failure.UNKNOWN_TOKEN
        assert gate.stats.verifications == verifications + 1  # verified again, not remembered

    with_gate(settings, store_path, clock, test)
