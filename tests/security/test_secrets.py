"""Secrets never leak: a whole session at debug level, then every log line, answer, metric and Redis key is searched.

The session runs fluxauth as ``fluxauth serve`` does (its protocol, its
redacting log formatter, uvicorn's access log on, as at ``log_level = "debug"``)
with Redis and an upstream whose URLs carry passwords.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import logging.config
from collections.abc import Iterator

import pytest
import redis

from fluxauth.clock import FakeClock
from fluxauth.config.settings import Secret, Settings, load_settings, redact_url
from fluxauth.errors import ConfigError
from fluxauth.manage.admin import Admin, IssuedToken
from fluxauth.proxy.app import RedactingFormatter, logging_config
from fluxauth.store.sqlite import SQLiteStore
from tests.support.readers import RawResponse, basic_value, get_raw, request_bytes, send_raw
from tests.support.servers import ServerThread, redis_url, start_proxy

pytestmark = pytest.mark.servers  # starts servers of its own (tests/conftest.py)

REDIS_PASSWORD = "redis-pw-Zq8v1Lk3"
UPSTREAM_PASSWORD = "upstream-pw-Hc4n7Rt2"
CACHE_SECRET = "cache-secret-Wm5p0Xy9Gf"
REDIS_URL = redis_url(password=REDIS_PASSWORD)
TILE = b"/v1/services/tiles/acme/era5/main/_echo"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every log record of every logger at DEBUG, through the very configuration ``fluxauth serve`` gives uvicorn."""
    stream = io.StringIO()
    config = logging_config("debug")
    config["handlers"]["stderr"]["stream"] = stream
    loggers = [logging.getLogger(name) for name in (None, *config["loggers"])]
    saved = [(logger, logger.level, list(logger.handlers), logger.propagate) for logger in loggers]
    logging.config.dictConfig(config)
    try:
        yield stream
    finally:
        for logger, level, handlers, propagate in saved:
            logger.setLevel(level)
            logger.handlers[:] = handlers
            logger.propagate = propagate


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def fragments(token: str) -> set[str]:
    """What must never be seen of a token: itself, its secret and id, any 8 characters of the secret, its header."""
    _, token_id, secret = token.split("_", 2)
    header = base64.b64encode(f"acme:{token}".encode()).decode()
    found = {token, secret, token_id, header}
    found |= {secret[start : start + 8] for start in range(len(secret) - 7)}
    found |= {header[start : start + 16] for start in range(8, len(header) - 15, 4)}
    return found


def test_secrets_never_leak_in_a_whole_session(
    captured: io.StringIO,
    redis_db: redis.Redis,
    settings: Settings,
    store_path: str,
    store: SQLiteStore,
    clock: FakeClock,
    upstream: ServerThread,
) -> None:
    """Create, use, rotate, fail, lock out, delete: no token, secret, hash, cache secret or URL password anywhere.


    Defences: tokens are cached and counted only under HMACs (cache, shared,
    ``Gate._token_subject``); ``BasicCredentials``/``TokenParts`` reprs hide
    secrets; refusals never echo input; Authorization is never forwarded;
    ``RedactingFormatter`` and ``redact_url`` keep URL passwords out of logs.
    """
    session = dataclasses.replace(
        settings,
        redis_url=REDIS_URL,
        upstream=upstream.url.replace("http://", f"http://svc:{UPSTREAM_PASSWORD}@"),
        cache_secret=Secret(CACHE_SECRET),
        log_level="debug",
        rate_limit_failures=4,
    )
    admin = Admin(store, session, clock)
    front = start_proxy(session, store_path, clock, log_config=None, log_level="trace", access_log=True)
    answers: list[RawResponse] = []

    def get(token: str | None = None, *, username: str = "acme", target: bytes = TILE) -> int:
        headers = [(b"Authorization", basic_value(username, token))] if token else []
        answers.append(get_raw(front.port, target, headers))
        return answers[-1].status

    try:
        admin.create_org("acme")
        admin.enable_service("acme", "tiles")
        first: IssuedToken = admin.create_key("acme", "maps", permissions=["read"])
        front.server.call(front.app.gate.poll_changes())
        assert get(first.token) == 200
        assert get(first.token) == 200  # cached
        second = admin.rotate_key("acme", "maps", grace=3600)
        hashes = [
            credential.token.hash for key in (first, second) if (credential := store.get_credential(key.token_id))
        ]
        assert len(hashes) == 2
        front.server.call(front.app.gate.poll_changes())
        assert get(first.token) == 200  # in its grace period
        assert get(second.token) == 200
        wrong = f"ema_{second.token_id}_{'A' * 40}"
        assert get(wrong) == 401
        assert get(second.token, username="beta") == 401
        assert get(second.token[:-1]) == 401  # malformed
        assert get(second.token, target=b"/v1/services/tiles/acme/era5/main/%2e%2e/x") == 400
        two = request_bytes(TILE, [(b"Authorization", basic_value("acme", second.token))] * 2)
        answers.append(send_raw(front.port, two))
        assert answers[-1].status == 400
        absolute = b"http://acme:" + second.token.encode() + b"@fluxauth.test" + TILE  # the token in the target
        answers.append(get_raw(front.port, absolute))
        assert answers[-1].status == 401
        for _ in range(4):
            get(wrong)
        assert get(wrong) == 429
        clock.advance(3601)
        assert get(first.token) == 401  # past its grace
        admin.delete_key("acme", "maps")
        front.server.call(front.app.gate.poll_changes())
        assert get(second.token) == 401
        answers.append(get_raw(front.port, b"/_fluxauth/metrics"))
        answers.append(get_raw(front.port, b"/_fluxauth/readyz"))
    finally:
        front.server.stop()

    forbidden = fragments(first.token) | fragments(second.token) | set(hashes)
    forbidden |= {REDIS_PASSWORD, UPSTREAM_PASSWORD, CACHE_SECRET}
    logs = captured.getvalue()
    redis_text = "\n".join(
        key.decode() + " " + (redis_db.get(key) or b"").decode("latin-1")
        for key in redis_db.keys("*")
        if redis_db.type(key) == b"string"
    )
    places = {
        "logs": logs,
        "answers": "\n".join(f"{r.status} {r.headers} {r.body.decode('latin-1')}" for r in answers),
        "redis": redis_text,
    }
    assert "GET /v1/services/tiles/acme/era5/main/_echo" in logs  # the access log was on
    assert "fluxauth started: upstream http://***@127.0.0.1" in logs
    assert "fluxauth:cred:" in redis_text
    assert "fluxauth:fail:" in redis_text
    leaks = [(place, secret) for place, text in places.items() for secret in forbidden if secret in text]
    lines, keys = len(logs.splitlines()), len(redis_text.splitlines())
    print(f"searched {lines} log lines, {len(answers)} answers, {keys} Redis keys")
    assert not leaks


def test_secrets_url_userinfo_is_redacted(captured: io.StringIO) -> None:
    """URL passwords are redacted in log lines (from any logger), in Settings' repr and in configuration errors.

    Defences: ``RedactingFormatter`` on the handler ``fluxauth serve`` installs
    (``logging_config``), ``Settings.__repr__``, ``redact_url`` in ``_url``'s error.
    """
    assert redact_url("redis://:pw@host:6379/0") == "redis://***@host:6379/0"
    assert redact_url("see http://user:p@ss@host/x and https://u:v@h") == "see http://***@host/x and https://***@h"
    assert redact_url("http://host/a@b") == "http://host/a@b"  # an '@' in the path is no userinfo
    assert redact_url("postgresql://u:pw@db/f?sslmode=require&password=pw2") == (
        "postgresql://***@db/f?sslmode=require&password=***"
    )
    logging.getLogger("aiohttp.client").warning("cannot connect to %s", f"http://svc:{UPSTREAM_PASSWORD}@up:8001/x")
    try:
        raise ValueError(f"redis://default:{REDIS_PASSWORD}@127.0.0.1:6379/0 refused")
    except ValueError:
        logging.getLogger("redis").exception("connection failed")
    logs = captured.getvalue()
    assert "http://***@up:8001/x" in logs
    assert "redis://***@127.0.0.1:6379/0 refused" in logs
    assert UPSTREAM_PASSWORD not in logs
    assert REDIS_PASSWORD not in logs
    settings = Settings(redis_url=REDIS_URL, upstream=f"http://svc:{UPSTREAM_PASSWORD}@up:8001")
    assert REDIS_PASSWORD not in repr(settings)
    assert UPSTREAM_PASSWORD not in repr(settings)
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"FLUXAUTH_UPSTREAM": f"ftp://svc:{UPSTREAM_PASSWORD}@up"})
    assert UPSTREAM_PASSWORD not in str(caught.value)
    config = logging_config("debug")
    assert config["formatters"]["redacting"]["()"] is RedactingFormatter
    assert config["root"]["handlers"] == ["stderr"]
    assert all(logger["propagate"] for logger in config["loggers"].values())
