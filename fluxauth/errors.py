"""Exceptions raised by fluxauth, all under one root.

The hierarchy::

    FluxAuthError
    ├── ConfigError               a setting is missing or has a bad value
    ├── InputError                a command-line or API argument is not acceptable
    │   ├── NotFound              the org, key or token it names does not exist
    │   └── Conflict              it exists already
    ├── StoreError                the store failed
    │   └── StoreUnavailable      the store cannot be reached right now (503, never 401)
    ├── Refusal                   a request fluxauth answers itself; carries status and error code
    │   ├── PathError             the path cannot be decided on
    │   │   ├── NotComputePath        not a compute URL, or a protocol or name that cannot exist (404)
    │   │   └── AmbiguousPath         some reader could take the path another way (400)
    │   ├── BadRequest            the request cannot be handled as sent (400)
    │   │   ├── UnclearForwardAuth      forward-auth was not told which request it decides (400)
    │   │   ├── BadHost                the Host (or a trusted X-Forwarded-Host) is invalid or not served (400)
    │   │   ├── UnwritableHost         a routed answer names its URLs, and no Host was given to write them with (400)
    │   │   ├── UriTooLong             path and query over max_url_length (414)
    │   │   ├── BodyTooLarge           a body over max_request_body, declared or streamed (413)
    │   │   ├── HeadTooLarge           request line and headers over max_header_bytes (431)
    │   │   ├── RequestTimeout         the head or a body did not arrive in time (408)
    │   │   ├── UnsupportedTransferCoding  a transfer coding other than chunked (501)
    │   │   └── UnsupportedMethod      TRACE or CONNECT (501)
    │   └── MalformedCredentials  the Authorization header is not Basic org:API-key (401)
    │       └── ConflictingCredentials   more than one Authorization header (400)
    ├── ClientFailed              the client broke off an exchange: nothing more is owed it
    │   ├── ClientGone                it disconnected
    │   └── ClientStalled             it left the response unread longer than send_timeout
    └── UpstreamError             the upstream failed a request (502 unless said otherwise)
        ├── UpstreamBusy              every connection the request may use stayed busy (503)
        ├── UpstreamUnreachable       no connection could be made (502)
        ├── UpstreamTimeout           no connection, or no byte, in time (504)
        ├── UpstreamBroken            the response broke off or cannot be parsed (502)
        └── UpstreamUnmappable        a routed metadata response cannot be rewritten (502)

A ``Refusal`` and an ``UpstreamError`` carry the status and the JSON ``error``
code they are answered with: a status is decided here, on the class, and
nowhere else (the refusals of the decision itself, which are not exceptions,
are the table in ``decision/policy.py``). Only the command line's entry point
turns errors into exit codes, and only the HTTP layers (``proxy``, ``server``)
into responses, through ``proxy.responses``.
"""

from __future__ import annotations


class FluxAuthError(Exception):
    """The root of every error fluxauth raises on purpose."""


class ConfigError(FluxAuthError):
    """A setting is missing or has a bad value; the message names both."""


class InputError(FluxAuthError):
    """An argument is not acceptable; the message says which and why.

    ``field`` names the argument where one is to blame (the management API's
    422 names it: ``grace``, ``expires_in``).
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(InputError):
    """The org, key or token named does not exist."""


class Conflict(InputError):
    """The thing to be created exists already."""


class StoreError(FluxAuthError):
    """The store failed."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now; callers answer 503, never 401."""


class Refusal(FluxAuthError):
    """A request that fluxauth answers itself with ``status`` and ``{"error", "detail"}``; the message is the detail."""

    status = 400
    error = "bad_request"

    @property
    def detail(self) -> str:
        return str(self)


class PathError(Refusal):
    """The path cannot be decided on."""

    error = "bad_path"


class NotComputePath(PathError):
    """Not a compute URL, or a protocol or name that cannot exist: 404, as for an unknown org."""

    status = 404
    error = "not_found"


class AmbiguousPath(PathError):
    """A path that some reader could understand another way: refused, never repaired."""


class BadRequest(Refusal):
    """The request itself cannot be handled as sent."""


class UnclearForwardAuth(BadRequest):
    """The proxy did not say, or said more than once, which request forward-auth decides."""


class BadHost(BadRequest):
    """The Host header, or a trusted proxy's X-Forwarded-Host, is not one valid host[:port], or not in public_hosts."""

    error = "bad_host"


class UnwritableHost(BadRequest):
    """A routed response's self-URLs must name the public side, and the request gave nothing plain to name it by.

    An HTTP/1.0 request without a Host, or a trusted proxy's
    ``X-Forwarded-Proto`` that is neither http nor https: refused rather than
    a document written with no host, or with what the proxy sent (the gate
    has already refused a Host that is not one ``host[:port]``).
    """


class UriTooLong(BadRequest):
    status = 414
    error = "uri_too_long"


class BodyTooLarge(BadRequest):
    status = 413
    error = "too_large"


class HeadTooLarge(BadRequest):
    status = 431
    error = "headers_too_large"


class RequestTimeout(BadRequest):
    status = 408
    error = "request_timeout"


class UnsupportedTransferCoding(BadRequest):
    # RFC 9112 §6.1: a transfer coding the server does not understand is 501.
    status = 501
    error = "not_implemented"


class UnsupportedMethod(BadRequest):
    """TRACE or CONNECT: never forwarded (``decision/request.py`` says why).

    501 rather than 405: RFC 9110 §15.5.6 wants a 405 to list the methods the
    resource allows, which only the upstream knows; 501 says the server does
    not support the method for any resource (§15.6.2), which is the case.
    """

    status = 501
    error = "not_implemented"


class MalformedCredentials(Refusal):
    """The ``Authorization`` header cannot be a fluxauth credential."""

    status = 401
    error = "unauthorized"


class ConflictingCredentials(MalformedCredentials):
    """More than one ``Authorization`` header: servers and frameworks disagree on which wins."""

    status = 400
    error = "bad_request"


class ClientFailed(FluxAuthError):
    """The client broke off the exchange; nothing more is sent to it."""


class ClientGone(ClientFailed):
    """The client disconnected while its request was being forwarded."""


class ClientStalled(ClientFailed):
    """The client did not accept a piece of the response within ``send_timeout``."""


class UpstreamError(FluxAuthError):
    """The upstream failed a request; ``kind`` names the failure in the metrics."""

    kind = "protocol"
    status = 502
    error = "bad_gateway"
    detail = "the upstream cannot be reached"
    retry_after: int | None = None  # seconds, for a Retry-After header


class UpstreamBusy(UpstreamError):
    """Every connection the request may use stayed busy for ``upstream_connect_timeout``: nothing was sent (503)."""

    kind = "busy"
    status = 503
    error = "upstream_busy"
    detail = "every upstream connection this request may use is busy"
    retry_after = 1


class UpstreamUnreachable(UpstreamError):
    """No connection to the upstream could be made: nothing was sent (502)."""

    kind = "connection"


class UpstreamTimeout(UpstreamError):
    """The upstream did not accept a connection, or sent nothing, in time (504)."""

    kind = "timeout"
    status = 504
    error = "upstream_timeout"
    detail = "the upstream did not answer in time"


class UpstreamBroken(UpstreamError):
    """The upstream closed the connection mid-response or sent what cannot be parsed (502)."""


class UpstreamUnmappable(UpstreamError):
    """A routed metadata response whose self-URLs cannot be mapped back (too large, an unknown coding): 502.

    Answered 502 rather than passed through: the body would name the upstream.
    """

    kind = "unmappable"
    detail = "the upstream's metadata response cannot be rewritten"
