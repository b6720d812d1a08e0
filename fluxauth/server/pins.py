"""Every piece of uvicorn that ``fluxauth/server/`` overrides or mimics, pinned by its source, and why.

fluxauth serve runs uvicorn's httptools protocol with limits of its own
(``protocol.py``) and answers cached requests without the ASGI app
(``hotpath.py``). Both lean on uvicorn's internals: methods they replace or
extend, attributes they read and set, answers they write the way uvicorn's
``send`` would so that both paths answer the same bytes. None of that is
uvicorn's public API, and a release may change any of it without notice.

So each such piece is pinned here by a hash of its source; the test
(``tests/server/test_pins.py``) fails when one changes, naming it and the
reason it matters. Moving uvicorn's bound in ``pyproject.toml``: read the
new source of each piece that fails, adapt fluxauth where the behaviour
moved, then update its hash (``python -m fluxauth.server.pins`` prints them
all). A protocol of fluxauth's own would end this coupling: see
docs/architecture.md, "A protocol of our own".
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from typing import NamedTuple


class Pin(NamedTuple):
    name: str  # the dotted path of a uvicorn function, method or class
    sha256: str  # the first 16 hex digits of the SHA-256 of its source
    reason: str


_PROTOCOL = "uvicorn.protocols.http.httptools_impl.HttpToolsProtocol."
_CYCLE = "uvicorn.protocols.http.httptools_impl.RequestResponseCycle."

PINS = (
    Pin(
        _PROTOCOL + "__init__",
        "4f08999410347141",
        "the attributes protocol.py and hotpath.py read: parser (with lenient_data_after_close), config, app,"
        " loop, server_state, pipeline, cycle, timeout_keep_alive, logger",
    ),
    Pin(_PROTOCOL + "connection_made", "6efb565ff3d36b91", "extended: transport and flow exist after it"),
    Pin(
        _PROTOCOL + "connection_lost",
        "c91a4c9bf2e29c55",
        "extended: marks the cycle disconnected (the ASGI path's disconnect listener hears it) and calls"
        " _unset_keepalive_if_required, which protocol.py makes a no-op",
    ),
    Pin(
        _PROTOCOL + "data_received",
        "010a7ae59a5d3b1a",
        "replaced by protocol.py's, which must do the same (400 on parse errors, websocket upgrades) but ends"
        " the idle wait only when a request begins, and tells a callback's own exception from a bad request",
    ),
    Pin(_PROTOCOL + "_unset_keepalive_if_required", "00a6a4e47214e68e", "replaced by a no-op: the idle wait is ours"),
    Pin(_PROTOCOL + "_should_upgrade", "8fcad1ab8e096739", "called by protocol.py's data_received"),
    Pin(_PROTOCOL + "_unsupported_upgrade_warning", "55bbd2762b189d9a", "called by protocol.py's data_received"),
    Pin(_PROTOCOL + "handle_websocket_upgrade", "179c4f769386ab89", "called by protocol.py's data_received"),
    Pin(_PROTOCOL + "send_400_response", "ae5a4a3782b646fd", "extended: a head too large is 431 instead"),
    Pin(_PROTOCOL + "on_message_begin", "96d377fdc7c2baef", "extended: where the wait for a head begins"),
    Pin(
        _PROTOCOL + "on_headers_complete",
        "1ea8589acfad92d8",
        "extended: counts the head; builds the cycle and calls _start_asgi_task (deferred until the parser"
        " returns) or queues the request in the pipeline",
    ),
    Pin(
        _PROTOCOL + "_start_asgi_task",
        "9c08c2571ae9b038",
        "overridden: the hot path is offered each request here, the ASGI task started otherwise",
    ),
    Pin(_PROTOCOL + "on_message_complete", "1fbad42dc31fc01f", "extended: the next head begins after it"),
    Pin(
        _PROTOCOL + "on_response_complete",
        "64e254f28e389e76",
        "replaced by protocol.py's, the same but for the keep-alive timer (one per connection, ours)",
    ),
    Pin(_PROTOCOL + "shutdown", "d7351fa33f00d430", "relies on cycle.response_complete, which the hot path sets"),
    Pin(_PROTOCOL + "pause_writing", "17a8fd215d96a13c", "extended: the hot path pauses its upstream"),
    Pin(_PROTOCOL + "resume_writing", "7844bbaa8cceb1ef", "extended: the hot path resumes its upstream"),
    Pin(_PROTOCOL + "timeout_keep_alive_handler", "8b53bf5f2e202970", "called when the idle wait ends"),
    Pin(
        _CYCLE + "__init__",
        "4d2f220910c33c12",
        "the attributes the hot path reads and sets in uvicorn's stead: scope, keep_alive, response_started,"
        " response_complete, message_event, on_response, body, more_body, disconnected",
    ),
    Pin(
        _CYCLE + "send",
        "abdd8601b326a8da",
        "mimicked by hotpath.py (_head, respond, Splice): default headers, connection: close, chunked framing"
        " where no length is given, no body on HEAD, 204 and 304 — both paths must answer the same bytes",
    ),
    Pin(
        _CYCLE + "send_500_response",
        "37c64da40eedaeaf",
        "mimicked by hotpath.INTERNAL_ERROR_* and protocol.py: a fault reads the same on both paths",
    ),
    Pin(_CYCLE + "run_asgi", "0f33f2449a444bc2", "the ASGI path's 500 and traceback for an exception in the app"),
    Pin(
        _CYCLE + "receive",
        "8124ae006be71184",
        "the ASGI path's disconnect listener (proxy/forward.py) relies on it returning http.disconnect once the"
        " client is gone or the response complete",
    ),
    Pin("uvicorn.protocols.http.httptools_impl._get_status_line", "d7012e110d2d2574", "STATUS_LINE, used as is"),
    Pin(
        "uvicorn.protocols.http.flow_control.FlowControl",
        "126debcdaa894c83",
        "pause_reading, resume_reading and read_paused, used by protocol.py and hotpath.py",
    ),
    Pin("uvicorn.server.ServerState", "f2260fbf10154746", "default_headers and total_requests, kept by the hot path"),
)


def resolve(name: str) -> object:
    """The object a dotted path names: a module's attribute, a class's method."""
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute)
        return found
    raise ImportError(name)


def source_hash(name: str) -> str:
    """The first 16 hex digits of the SHA-256 of the source of what ``name`` names, as installed now."""
    source = inspect.getsource(resolve(name))  # type: ignore[arg-type]
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


if __name__ == "__main__":
    for pin in PINS:
        print(f"{source_hash(pin.name)}  {pin.name}")
