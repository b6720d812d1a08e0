"""The ASGI types every layer speaks, in one place (ASGI 3: https://asgi.readthedocs.io/)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = dict[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# Header names and values as bytes, names in lower case, in order, repeats kept.
Headers = list[tuple[bytes, bytes]]
