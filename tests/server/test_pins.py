"""The uvicorn internals that fluxauth/server overrides or mimics have not moved (fluxauth/server/pins.py)."""

from __future__ import annotations

import ast
import inspect

import pytest
import uvicorn

import fluxauth.server.hotpath
import fluxauth.server.protocol
from fluxauth.server.pins import PINS, source_hash
from fluxauth.server.protocol import LimitedHttpToolsProtocol


@pytest.mark.parametrize(
    "pin", PINS, ids=[pin.name.rsplit(".", 2)[-2] + "." + pin.name.rsplit(".", 1)[-1] for pin in PINS]
)
def test_pins_uvicorn_source_is_the_one_fluxauth_was_written_against(pin: object) -> None:
    """Each pinned piece of uvicorn has the source it had when fluxauth's server code was written against it."""
    name, expected, reason = pin  # type: ignore[misc]
    assert source_hash(name) == expected, (
        f"uvicorn {uvicorn.__version__} changed {name}: {reason}. Read its new source, adapt fluxauth/server,"
        " then update the hash in fluxauth/server/pins.py"
    )


def test_pins_every_override_is_pinned() -> None:
    """Every method LimitedHttpToolsProtocol defines over uvicorn's own is pinned, so none drifts unseen."""
    pinned = {pin.name.rsplit(".", 1)[1] for pin in PINS if ".HttpToolsProtocol." in pin.name}
    base = LimitedHttpToolsProtocol.__mro__[1]
    overridden = {name for name in vars(LimitedHttpToolsProtocol) if name in vars(base) and callable(vars(base)[name])}
    assert overridden <= pinned, overridden - pinned


def test_pins_every_uvicorn_import_of_the_server_package_is_pinned() -> None:
    """What the server package imports from uvicorn's internals is among the pins (or their modules)."""
    pinned = " ".join(pin.name for pin in PINS)
    for module in (fluxauth.server.protocol, fluxauth.server.hotpath):
        tree = ast.parse(inspect.getsource(module))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("uvicorn."):
                for alias in node.names:
                    if alias.name in ("ASGI3Application", "Config", "STATUS_LINE"):
                        continue  # a type, the config read once, the table _get_status_line builds
                    assert f"{node.module}.{alias.name}" in pinned, (module.__name__, node.module, alias.name)
