"""The store: orgs, compute services, repo settings, keys, tokens, the change feed and the audit log.

``base`` says what a store does, ``opening`` opens one from a URL; ``sql`` does it, once,
for both databases; ``sqlite`` (the embedded default) and ``postgres`` hold
what differs between them; ``schema`` the versioned migrations; ``copy`` moves
a whole store from one database to another. Store methods are synchronous and
quick; the server calls them off the event loop (``aio.AsyncStore``).
"""

from fluxauth.model import (
    AuditEvent,
    Change,
    Credential,
    KeyRecord,
    OrgPolicy,
    ServiceRecord,
    TokenRecord,
    Visibility,
)
from fluxauth.store.base import ChangeListener, Store
from fluxauth.store.opening import open_store

__all__ = [
    "AuditEvent",
    "Change",
    "ChangeListener",
    "Credential",
    "KeyRecord",
    "OrgPolicy",
    "ServiceRecord",
    "Store",
    "TokenRecord",
    "Visibility",
    "open_store",
]
