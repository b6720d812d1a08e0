"""Exceptions raised by fluxauth.

The hierarchy::

    FluxAuthError
    ├── ConfigError           a setting is missing or has a bad value
    ├── InputError            a command-line or API argument is not acceptable
    │   ├── NotFound          the org, key or token it names does not exist
    │   └── Conflict          it exists already
    └── StoreError            the store failed
        └── StoreUnavailable  the store cannot be reached right now (503, never 401)

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
