"""The management API, ``/_fluxauth/api/v1/``: org admins manage their own org's keys, services and repos.

Plain ASGI, like the rest of fluxauth, with a route table (``fluxauth.manage.routes``)
that also writes ``openapi.json`` (``fluxauth.manage.openapi``). A request goes:

1. the route, by method and path (404, 405); ``openapi.json`` needs no credentials;
2. a cross-site browser request (``Sec-Fetch-Site``) is refused (403): no
   other site may use credentials a browser holds for fluxauth;
3. the credentials, through the gate (``Gate.principal``): the same cache,
   failure limits and bound on argon2 verifications as data requests (401,
   429, 503). A 401 carries the Basic challenge unless the request says it
   comes from a script (``X-Requested-With``, as the page's do), so the page
   never makes the browser open its login dialog;
4. the org: a key of any other org gets 404 with the very body of an org
   that does not exist, so that no org's existence can be learned; a key of
   the org without ``manage_org_users`` gets 403;
5. the path's names, the query and the body (JSON object, at most
   ``MAX_BODY`` bytes, ``application/json``): 400, 413, 415, 422 naming the field;
6. the action, by ``Admin`` with the principal as its actor: the mutation and
   its audit event in one transaction, then the change is applied here and
   announced to the other servers, as after a command-line change.

Every refusal after step 3 (the caller is known) is written to the caller's
own org's audit log, reads included: ``denied`` for steps 4, ``failed`` for
steps 5 and 6. Nothing is written for callers nobody knows, nor ever to
another org's log.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote_to_bytes

from pydantic import BaseModel, ValidationError

from fluxauth.auth.gate import Gate
from fluxauth.auth.verifier import yield_to_the_event_loop
from fluxauth.config.settings import Settings
from fluxauth.decision.credentials import CHALLENGE
from fluxauth.decision.policy import STORE_RETRY_AFTER, Decision, Principal
from fluxauth.decision.request import RequestHead, check_framing
from fluxauth.errors import BadRequest, Conflict, InputError, NotFound, Refusal, StoreUnavailable
from fluxauth.manage import schemas
from fluxauth.manage.admin import Actor, Admin
from fluxauth.manage.openapi import openapi_document
from fluxauth.manage.routes import MAX_BODY, PREFIX, ROUTES, TOKEN_ID, Route
from fluxauth.manage.schemas import (
    AuditEventView,
    AuditQuery,
    ErrorView,
    IssuedView,
    KeyView,
    NewKey,
    RepoSettings,
    RepoView,
    Rotation,
    ServiceSettings,
    ServiceView,
    dump,
)
from fluxauth.model import Permission
from fluxauth.names import KEY_RULE, REPO_RULE, check_key_name, check_repo
from fluxauth.types import Headers, Receive, Scope, Send

log = logging.getLogger("fluxauth.manage")

# Mutations waiting for the management thread (each hashes a token with argon2): beyond, 503.
MAX_PENDING_ACTIONS = 16
MANAGE_PERMISSION: Permission = "manage_org_users"
_TOKEN_ID = re.compile(TOKEN_ID)


def _check_token_id(value: str) -> str:
    if not _TOKEN_ID.fullmatch(value):
        raise InputError(f"bad token id {value!r}: 16 hexadecimal digits")
    return value


# Path parameters other than the org (checked by whose key it is), and their checks.
PATH_CHECKS: dict[str, Callable[[str], str]] = {
    "name": check_key_name,
    "repo": check_repo,
    "token_id": _check_token_id,
}
# Anything shaped like a token is cut down to its id before it reaches a log.
_TOKEN_LIKE = re.compile(r"(ema_[0-9a-fA-F]{0,16})_[A-Za-z0-9_-]+")
_DURATION_RULE = "use a number with a unit s, m, h, d or w, e.g. 2h or 90d"
_PATTERN_RULES = {
    "name": f"use {KEY_RULE}",
    "repos": f"use {REPO_RULE}",
    "grace": _DURATION_RULE,
    "expires_in": _DURATION_RULE,
}

T = TypeVar("T")


class Refused(Refusal):
    """An answer of the API other than success: the status, ``{"error", "detail"}``, for 422 the field.

    A ``Refusal`` whose status and code are the instance's (the API answers
    many), with the headers that go with it and what the audit log calls it.
    """

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        *,
        field: str | None = None,
        headers: Headers | None = None,
        outcome: str = "failed",
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.field = field
        self.headers = headers or []
        self.outcome = outcome  # in the audit log: "denied" or "failed"


# The answer to a key of another org, and to an org that does not exist: the same bytes.
NO_ORG = Refused(404, "not_found", "no such org", outcome="denied")


def _refusal(decision: Decision) -> Refused:
    headers: Headers = []
    if decision.retry_after is not None:
        headers.append((b"retry-after", str(decision.retry_after).encode("ascii")))
    return Refused(decision.status, decision.error, decision.detail, headers=headers)


def _from_input(exc: InputError) -> Refused:
    detail = str(exc) if exc.field is None else f"{exc.field}: {exc}"
    if isinstance(exc, NotFound):
        return Refused(404, "not_found", detail, field=exc.field)
    if isinstance(exc, Conflict):
        return Refused(409, "conflict", detail, field=exc.field)
    return Refused(422, "invalid", detail, field=exc.field)


def safe_text(text: str, limit: int = 200) -> str:
    """``text`` fit for the audit log: token secrets cut off, control characters escaped, bounded."""
    text = _TOKEN_LIKE.sub(r"\1_***", text)
    text = "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _validation_refusal(exc: ValidationError, *, where: str = "") -> Refused:
    """The 400 or 422 for a body or query that its model refused: the first error, its field named."""
    error = exc.errors(include_url=False, include_input=False)[0]
    kind = error["type"]
    loc = [str(part) for part in error["loc"] if part != "[key]"]
    if kind == "json_invalid":
        return Refused(400, "bad_request", "the body is not valid JSON")
    if not loc and kind in ("model_type", "model_attributes_type", "dict_type"):
        return Refused(400, "bad_request", "the body must be a JSON object")
    name = ".".join(loc) or where
    message = error["msg"]
    if kind == "extra_forbidden":
        message = "unknown field" if not where else "unknown query parameter"
    elif kind == "missing":
        message = "required"
    elif kind == "string_pattern_mismatch" and loc and loc[0] in _PATTERN_RULES:
        message = _PATTERN_RULES[loc[0]]
    return Refused(422, "invalid", f"{name}: {message}", field=loc[0] if loc else where or None)


@dataclass
class Call:
    """One request to the API, as it is worked out."""

    route: Route
    params: dict[str, str]
    head: RequestHead
    headers: dict[bytes, bytes]  # the request's, the last of each name
    principal: Principal | None = None
    actor: Actor | None = None
    body: Any = None
    query: Any = None
    location: str | None = None
    extra: Headers = field(default_factory=list)

    @property
    def org(self) -> str:
        return self.params["org"]


def match(method: str, rest: bytes) -> tuple[Route, dict[str, str]]:
    """The route for ``method`` and the path after ``PREFIX/``, with its parameters percent-decoded."""
    parts = rest.split(b"/")
    allowed = []
    for route in ROUTES:
        segments = route.segments
        if len(segments) != len(parts):
            continue
        params: dict[str, str] = {}
        for template, part in zip(segments, parts, strict=True):
            if template.startswith("{"):
                if not part:
                    break
                try:
                    params[template[1:-1]] = unquote_to_bytes(part).decode("utf-8")
                except UnicodeDecodeError:
                    params[template[1:-1]] = "\ufffd"  # refused as a name below
            elif part != template.encode("ascii"):
                break
        else:
            if route.method == method:
                return route, params
            allowed.append(route.method)
    if allowed:
        raise Refused(
            405,
            "method_not_allowed",
            f"this endpoint takes {', '.join(allowed)}",
            headers=[(b"allow", ", ".join(allowed).encode("ascii"))],
        )
    raise Refused(404, "not_found", "no such endpoint")


class ManagementApi:
    """The API's requests: authorization, input, the actions and their answers."""

    def __init__(self, settings: Settings, gate: Gate) -> None:
        self.settings = settings
        self.gate = gate
        self._admin: Admin | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending = 0
        self.openapi = b""

    def start(self) -> None:
        # One action at a time, below the event loop's priority: each hashes a new token with argon2.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fluxauth-manage", initializer=yield_to_the_event_loop)
        self.openapi = schemas.json_bytes(openapi_document(self.settings))

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    @property
    def admin(self) -> Admin:
        """The actions, over the gate's store once it has one (a server may start before its store answers)."""
        if self._admin is None:
            if self.gate.store is None:
                raise Refused(503, "unavailable", "the key store cannot be reached; retry shortly")
            self._admin = Admin(self.gate.store.store, self.settings, self.gate.clock)
        return self._admin

    # -- the request ---------------------------------------------------------------

    async def __call__(self, rest: bytes, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a request to ``PREFIX/`` + ``rest``."""
        method = scope["method"]
        if rest == b"openapi.json" and method in ("GET", "HEAD"):
            await send_answer(send, 200, self.openapi, head_only=method == "HEAD")
            return
        head = RequestHead.from_scope(scope)
        headers = dict(scope["headers"])
        call: Call | None = None
        try:
            route, params = match(method, rest)
            call = Call(route, params, head, headers)
            await self._answer(call, receive, send)
        except Refused as refused:
            if call is not None and call.actor is not None:
                await self._record_refusal(call, refused)
            await self._send_refusal(send, head, headers, refused)

    async def _answer(self, call: Call, receive: Receive, send: Send) -> None:
        head = call.head
        try:
            check_framing(head, max_url_length=self.settings.max_url_length)
        except BadRequest as exc:
            raise Refused(exc.status, exc.error, str(exc)) from None
        if _cross_site(call.headers):
            raise Refused(
                403, "forbidden", "cross-site requests are refused: use the API from its own page or a script"
            )
        principal = await self.gate.principal(head)
        if isinstance(principal, Decision):
            raise _refusal(principal)
        call.principal = principal
        client = self.gate.proxies.client(head.peer, head.forwarded_for)
        call.actor = Actor(principal.label, safe_text(client, 100))
        if principal.org != call.org:
            raise NO_ORG
        if MANAGE_PERMISSION not in principal.permissions:
            raise Refused(
                403, "forbidden", "this key may not manage the org: it lacks manage_org_users", outcome="denied"
            )
        self._check_params(call)
        if call.route.query is not None:
            call.query = self._query(call.route.query, head.query)
        body = await read_body(head, receive, self.settings.client_body_timeout)
        call.body = self._body(call.route, body, call.headers.get(b"content-type"))
        handler: Callable[[Call], Awaitable[Any]] = getattr(self, call.route.name)
        answer = await handler(call)
        if call.route.mutates:
            await self.gate.changed()
        headers = list(call.extra)
        if call.location is not None:
            headers.append((b"location", call.location.encode("ascii")))
        payload = None if answer is None else schemas.json_bytes(dump(answer))
        await send_answer(send, call.route.status, payload, headers)

    def _check_params(self, call: Call) -> None:
        for name, value in call.params.items():
            check = PATH_CHECKS.get(name)
            if check is None:
                continue
            try:
                check(value)
            except InputError as exc:
                raise Refused(422, "invalid", f"{name} (in the path): {safe_text(str(exc))}", field=name) from None

    @staticmethod
    def _query(model: type[BaseModel], raw: bytes) -> BaseModel:
        try:
            pairs = parse_qsl(
                raw.decode("latin-1"), keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=20
            )
        except (ValueError, UnicodeDecodeError):
            raise Refused(400, "bad_request", "the query string cannot be read") from None
        values: dict[str, str] = {}
        for name, value in pairs:
            if name in values:
                raise Refused(422, "invalid", f"{safe_text(name, 40)}: given more than once", field=name)
            values[name] = value
        try:
            return model.model_validate_strings(values)
        except ValidationError as exc:
            raise _validation_refusal(exc, where="query") from None

    def _body(self, route: Route, raw: bytes, content_type: bytes | None) -> BaseModel | None:
        if content_type is not None and not _is_json(content_type):
            # Even with no body: an HTML form always says its type, and none is
            # JSON, so no other site's form can make a mutation (SECURITY.md).
            raise Refused(415, "unsupported_media_type", "the body must be application/json")
        if route.body is None:
            if raw:
                raise Refused(400, "bad_request", "this endpoint takes no body")
            return None
        if not raw:
            raw = b"{}"  # no body: every field takes its default
        elif content_type is None:
            raise Refused(415, "unsupported_media_type", "the body must be application/json")
        try:
            return route.body.model_validate_json(raw)
        except ValidationError as exc:
            raise _validation_refusal(exc) from None

    async def _send_refusal(
        self, send: Send, head: RequestHead, request_headers: dict[bytes, bytes], refused: Refused
    ) -> None:
        headers = list(refused.headers)
        if refused.status == 401 and b"x-requested-with" not in request_headers:
            # Scripts (the page) handle a 401 themselves: without the challenge
            # the browser never opens its login dialog over the page.
            headers.append(CHALLENGE)
        if refused.status == 503 and not any(name == b"retry-after" for name, _ in headers):
            headers.append((b"retry-after", str(STORE_RETRY_AFTER).encode("ascii")))
        if refused.status in (408, 413) or (head.has_body and refused.status < 500 and refused.status != 422):
            headers.append(CLOSE)  # a body may still be on its way, unread
        payload = ErrorView(error=refused.error, detail=refused.detail, field=refused.field)
        await send_answer(send, refused.status, schemas.json_bytes(dump(payload)), headers)

    async def _record_refusal(self, call: Call, refused: Refused) -> None:
        """A refused attempt of a known caller, in its own org's log (never in another org's)."""
        assert call.principal is not None
        assert call.actor is not None
        if refused.status in (429, 503):
            return  # not the caller's doing, and the store may be the reason
        target = safe_text(call.head.raw_path.decode("latin-1").removeprefix(PREFIX + "/"))
        detail = safe_text(f"{refused.status} {refused.detail}")
        try:
            await self.gate_call(
                self.admin.record_refusal,
                call.principal.org,
                call.actor,
                call.route.action,
                target,
                refused.outcome,
                detail,
            )
        except (StoreUnavailable, Refused) as exc:
            log.warning("cannot record a refused management request: %s", exc)

    # -- running the actions -------------------------------------------------------

    async def gate_call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A quick store call (a read, an audit event) in the gate's store threads, bounded in time."""
        assert self.gate.store is not None
        try:
            return await self.gate.store.call(method, *args, **kwargs)
        except InputError as exc:
            raise _from_input(exc) from None
        except StoreUnavailable:
            raise Refused(503, "unavailable", "the key store cannot be reached; retry shortly") from None

    async def act(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A mutation, in the management thread (one at a time: creating and rotating hash with argon2)."""
        if self._pending >= MAX_PENDING_ACTIONS:
            raise Refused(503, "overloaded", "too many management actions at once; retry shortly")
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, lambda: method(*args, **kwargs))
        except InputError as exc:
            raise _from_input(exc) from None
        except StoreUnavailable:
            raise Refused(503, "unavailable", "the key store cannot be reached; retry shortly") from None
        finally:
            self._pending -= 1

    # -- the handlers (one per route, named after it) ------------------------------

    def _key_view(self, key: Any) -> KeyView:
        return KeyView.of(key, self.gate.last_used(key.org, key.name))

    async def list_keys(self, call: Call) -> list[KeyView]:
        keys = await self.gate_call(self.admin.list_keys, call.org)
        return [self._key_view(key) for key in keys]

    async def get_key(self, call: Call) -> KeyView:
        return self._key_view(await self.gate_call(self.admin.get_key, call.org, call.params["name"]))

    async def create_key(self, call: Call) -> IssuedView:
        body: NewKey = call.body
        issued = await self.act(
            self.admin.create_key,
            call.org,
            body.name,
            permissions=body.permissions,
            repo_grants=body.repos,
            expires_in=_seconds(body.expires_in, "expires_in"),
            actor=call.actor,
        )
        call.location = f"{PREFIX}/orgs/{call.org}/keys/{issued.key.name}"
        return IssuedView.of(issued)

    async def rotate_key(self, call: Call) -> IssuedView:
        body: Rotation = call.body
        grace = _seconds(body.grace, "grace")
        issued = await self.act(
            self.admin.rotate_key,
            call.org,
            call.params["name"],
            extend_months=body.extend_months,
            actor=call.actor,
            **({} if grace is None else {"grace": grace}),
        )
        return IssuedView.of(issued)

    async def revoke_token(self, call: Call) -> None:
        await self.act(
            self.admin.revoke_token, call.org, call.params["name"], call.params["token_id"], actor=call.actor
        )

    async def delete_key(self, call: Call) -> None:
        await self.act(self.admin.delete_key, call.org, call.params["name"], actor=call.actor)

    async def list_services(self, call: Call) -> list[ServiceView]:
        return [ServiceView.of(service) for service in await self.gate_call(self.admin.services, call.org)]

    async def get_service(self, call: Call) -> ServiceView:
        return ServiceView.of(await self.gate_call(self.admin.service, call.org, call.params["protocol"]))

    async def set_service(self, call: Call) -> ServiceView:
        body: ServiceSettings = call.body
        protocol = call.params["protocol"]
        await self.act(
            self.admin.set_service, call.org, protocol, enabled=body.enabled, is_public=body.is_public,
            actor=call.actor,
        )  # fmt: skip
        return ServiceView.of(await self.gate_call(self.admin.service, call.org, protocol))

    async def list_repos(self, call: Call) -> list[RepoView]:
        repos = await self.gate_call(self.admin.repos, call.org)
        return [RepoView(repo=repo, visibility=visibility) for repo, visibility in repos.items()]

    async def get_repo(self, call: Call) -> RepoView:
        repo = call.params["repo"]
        return RepoView(repo=repo, visibility=await self.gate_call(self.admin.visibility, call.org, repo))

    async def set_repo(self, call: Call) -> RepoView:
        body: RepoSettings = call.body
        repo = call.params["repo"]
        await self.act(self.admin.set_visibility, call.org, repo, body.visibility, actor=call.actor)
        return RepoView(repo=repo, visibility=body.visibility)

    async def list_audit(self, call: Call) -> list[AuditEventView]:
        query: AuditQuery = call.query
        events: Sequence[Any] = await self.gate_call(
            self.admin.audit,
            call.org,
            since=None if query.since is None else query.since.timestamp(),
            until=None if query.until is None else query.until.timestamp(),
            actor=query.actor,
            before=query.before,
            limit=query.limit,
        )
        if len(events) == query.limit:  # there may be more: the next page's link (RFC 8288)
            last = events[-1].seq
            call.extra.append((b"link", f'<{next_page(call, last)}>; rel="next"'.encode("ascii", "replace")))
        return [AuditEventView.of(event) for event in events]


def next_page(call: Call, before: int) -> str:
    from urllib.parse import urlencode

    query = {name: value for name, value in parse_qsl(call.head.query.decode("latin-1")) if name != "before"}
    query["before"] = str(before)
    return f"{PREFIX}/orgs/{call.org}/audit?{urlencode(query)}"


def _seconds(duration: str | None, field_name: str) -> int | None:
    from fluxauth.config.durations import parse_duration

    if duration is None:
        return None
    try:
        return parse_duration(duration)
    except InputError as exc:
        raise InputError(str(exc), field=field_name) from None


# -- the wire -----------------------------------------------------------------------

CLOSE = (b"connection", b"close")
# On every answer of the API and the page: never sniffed, never framed, no referrer sent on.
SECURITY_HEADERS: Headers = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")


def _cross_site(headers: dict[bytes, bytes]) -> bool:
    # Fetch Metadata (sent by every current browser): "same-origin" from the
    # page, "none" typed into the address bar; "same-site" and "cross-site"
    # are other pages, which may not act with credentials the browser holds.
    site = headers.get(b"sec-fetch-site")
    return site is not None and site.strip().lower() not in (b"same-origin", b"none")


def _is_json(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    media, _, params = content_type.partition(b";")
    if media.strip().lower() != b"application/json":
        return False
    charset = params.strip().lower()
    return not charset or charset.replace(b" ", b"") in (b"charset=utf-8", b'charset="utf-8"')


async def read_body(head: RequestHead, receive: Receive, pause: float) -> bytes:
    """The whole request body, at most ``MAX_BODY`` bytes (413 beyond, before reading it when declared)."""
    if not head.has_body:
        return b""
    declared = head.body_length
    if declared is not None and declared > MAX_BODY:
        raise Refused(413, "too_large", f"the body is larger than {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            message = await asyncio.wait_for(receive(), pause)
        except TimeoutError:
            raise Refused(408, "request_timeout", f"the body paused for longer than {pause:g} s") from None
        if message["type"] == "http.disconnect":
            raise Refused(400, "bad_request", "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise Refused(413, "too_large", f"the body is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_answer(
    send: Send, status: int, body: bytes | None, headers: Headers | None = None, *, head_only: bool = False
) -> None:
    """A JSON answer (``body``) or none (204), with the headers every API answer has."""
    out: Headers = [(b"cache-control", b"no-store"), *SECURITY_HEADERS, API_CSP, *(headers or [])]
    if body is not None:
        out += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode("ascii"))]
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": b"" if body is None or head_only else body})
