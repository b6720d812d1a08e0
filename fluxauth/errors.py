"""Exceptions raised by fluxauth.

The hierarchy::

    FluxAuthError
    ├── ConfigError           a setting is missing or has a bad value
    ├── InputError            a command-line or API argument is not acceptable
    │   ├── NotFound          the org, key or token it names does not exist
    │   └── Conflict          it exists already
    ├── StoreError            the store failed
    │   └── StoreUnavailable  the store cannot be reached right now (503, never 401)
    └── UpstreamError         the upstream failed a request
        ├── UpstreamUnreachable   no connection could be made (502)
        ├── UpstreamTimeout       no connection, or no byte, in time (504)
        └── UpstreamBroken        the response broke off or cannot be parsed (502)

Only the command line's entry point turns these into exit codes, and only the
ASGI layer turns them into status codes.
"""

from __future__ import annotations


class FluxAuthError(Exception):
    """The root of every error fluxauth raises on purpose."""


class ConfigError(FluxAuthError):
    """A setting is missing or has a bad value; the message names both."""


class InputError(FluxAuthError):
    """An argument is not acceptable; the message says which and why."""


class NotFound(InputError):
    """The org, key or token named does not exist."""


class Conflict(InputError):
    """The thing to be created exists already."""


class StoreError(FluxAuthError):
    """The store failed."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now; callers answer 503, never 401."""


class UpstreamError(FluxAuthError):
    """The upstream failed a request; ``kind`` names the failure in the metrics."""

    kind = "protocol"


class UpstreamUnreachable(UpstreamError):
    """No connection to the upstream could be made: nothing was sent (502)."""

    kind = "connection"


class UpstreamTimeout(UpstreamError):
    """The upstream did not accept a connection, or sent nothing, in time (504)."""

    kind = "timeout"


class UpstreamBroken(UpstreamError):
    """The upstream closed the connection mid-response or sent what cannot be parsed (502)."""
