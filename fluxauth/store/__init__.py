"""The store: orgs, compute services, repo settings, keys, tokens and the change feed.

``base`` says what a backend must do; ``sqlite`` is the embedded default.
Store methods are synchronous and quick; the server calls them off the event
loop (``fluxauth.auth.gate.AsyncStore``).
"""

from fluxauth.model import (
    Change,
    Credential,
    KeyRecord,
    OrgPolicy,
    ServiceRecord,
    TokenRecord,
    Visibility,
)
from fluxauth.store.base import Store, open_store

__all__ = [
    "Change",
    "Credential",
    "KeyRecord",
    "OrgPolicy",
    "ServiceRecord",
    "Store",
    "TokenRecord",
    "Visibility",
    "open_store",
]
