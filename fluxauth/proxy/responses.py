"""Answers that fluxauth gives itself: refusals as short JSON, preflights, internal endpoints.

Every refusal's body, on the ASGI path and from the protocol alike, is
``refusal_body``: ``{"error": ..., "detail": ...}``, never echoing what the client sent.
"""

from __future__ import annotations

import json

from fluxauth.decision.credentials import CHALLENGE
from fluxauth.decision.policy import Decision
from fluxauth.errors import Refusal, UpstreamError
from fluxauth.types import Headers, Send


def own_headers(body: bytes, content_type: bytes) -> Headers:
    """The headers of every answer fluxauth gives itself: type, length, never to be stored."""
    return [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"cache-control", b"no-store"),
    ]


def json_body(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


def refusal_body(error: str, detail: str) -> bytes:
    """The body of every refusal fluxauth answers, whichever layer writes it."""
    return json_body({"error": error, "detail": detail})


async def send_response(send: Send, status: int, body: bytes, headers: Headers, content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": own_headers(body, content_type) + headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, payload: object, headers: Headers = ()) -> None:  # type: ignore[assignment]
    await send_response(send, status, json_body(payload), list(headers), b"application/json")


def refusal_headers(decision: Decision) -> Headers:
    """The headers that go with a refusal: the Basic challenge, Retry-After."""
    headers: Headers = []
    if decision.status == 401:
        headers.append(CHALLENGE)
    if decision.retry_after is not None:
        headers.append((b"retry-after", str(decision.retry_after).encode("ascii")))
    return headers


async def send_refused(send: Send, status: int, error: str, detail: str, headers: Headers) -> None:
    """A refusal with ``refusal_body``."""
    await send_response(send, status, refusal_body(error, detail), headers, b"application/json")


async def send_refusal(send: Send, decision: Decision, extra: Headers) -> None:
    """The refusal that ``decision`` says, with its challenge or Retry-After."""
    await send_refused(send, decision.status, decision.error, decision.detail, refusal_headers(decision) + extra)


def error_headers(error: Refusal | UpstreamError) -> Headers:
    """The headers that go with an error's answer: Retry-After, when it says when to try again."""
    retry_after = getattr(error, "retry_after", None)
    return [] if retry_after is None else [(b"retry-after", str(retry_after).encode("ascii"))]


async def send_error(send: Send, error: Refusal | UpstreamError, extra: Headers) -> None:
    """The answer to a request refused, or failed by the upstream, before its response began."""
    await send_refused(send, error.status, error.error, error.detail, error_headers(error) + extra)
