"""The "API Clients" page in a real browser: Debian's Chromium driven by playwright-core.

``tests/browser/manage.mjs`` does what an org admin does — signs in with the
keyboard, creates a client, copies its token and uses it on a data URL, rotates
with a grace (both tokens work), revokes the old token now, deletes the client —
and reports what each step saw, the requests the page sent and every login
challenge Chromium raised (CDP ``Fetch.authRequired``: there must be none). The
screenshot it takes is the README's (``docs/ui-api-clients.png``, written when
``FLUXAUTH_UPDATE_SCREENSHOTS`` is set).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from fluxauth.clock import FakeClock
from fluxauth.manage.admin import Admin
from tests.conftest import Proxy
from tests.manage.conftest import TILE
from tests.support.browser import run_driver

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture
def report(admin: Admin, proxy: Proxy, clock: FakeClock, tmp_path: Path) -> dict[str, Any]:
    # The page tells "in grace" from "ended" by the browser's clock: the server's is set to it.
    clock.now = time.time()
    admin.create_org("acme")
    admin.enable_service("acme", "tiles")
    key = admin.create_key("acme", "admin", permissions=["manage_org_users"]).token
    admin.create_key("acme", "maps", permissions=["read"], repo_grants={"gfs": "write"})
    screenshot = tmp_path / "page.png"
    request = {
        "base": proxy.url,
        "org": "acme",
        "key": key,
        "tile": TILE.format(org="acme"),
        "screenshot": str(screenshot),
    }
    result = run_driver("manage.mjs", request, timeout=120)
    result["key"] = key
    if os.environ.get("FLUXAUTH_UPDATE_SCREENSHOTS"):  # the README's picture, taken anew on request
        shutil.copyfile(screenshot, DOCS / "ui-api-clients.png")
    return result


def test_page_whole_flow_and_never_a_login_dialog(report: dict[str, Any]) -> None:
    """The whole flow in Chromium, every step as the admin sees it, no login dialog at any point.

    One browser run (about ten seconds) serves every check below: last use,
    the dialogs' keyboard behaviour, credentials kept out of ambient browser
    state, the page's security headers.
    """
    steps = report["steps"]
    assert report["signedIn"]
    assert steps["initialFocus"] == "signin-org"
    assert steps["create"]["tokenShape"]
    assert steps["create"]["copiedIsToken"]  # the Copy button put the very token on the clipboard
    assert "will not be shown again" in steps["create"]["warning"]
    assert steps["create"]["dataWithToken"] == 200
    assert not steps["afterDismiss"]["tokenInPage"]  # gone once dismissed
    assert steps["rotate"]["newToken"]
    assert steps["rotate"]["copiedIsToken"]
    assert steps["rotate"]["bothWork"] == [200, 200]
    assert "in grace until" in steps["rotate"]["row"]
    assert steps["revoke"]["statuses"] == [401, 200]
    assert "stop working at once" in steps["deleteText"]
    assert steps["delete"]["status"] == 401
    assert steps["delete"]["refusedAfterMs"] < 1000
    assert "keys.delete" in steps["audit"]
    assert "admin@acme" in steps["audit"]
    assert steps["afterReload"] == {"signInShown": True, "consoleShown": False}
    assert report["authRequired"] == []
    assert report["dialogs"] == []
    assert report["pageErrors"] == []
    assert [line for line in report["console"] if line.startswith("error")] == []

    check_never_used(report)
    check_keyboard_dialogs(report)
    check_credentials_never_ambient(report)
    check_security_headers(report)


def check_never_used(report: dict[str, Any]) -> None:
    """A client never used shows "never" as its last use; one just used, a time."""
    assert report["steps"]["afterDismiss"]["neverUsed"] == "never"
    assert report["steps"]["afterDismiss"]["lastUsed"] not in ("never", "")


def check_keyboard_dialogs(report: dict[str, Any]) -> None:
    """In a dialog Tab and Shift+Tab stay inside; Escape closes it and gives focus back to its opener."""
    keyboard = report["steps"]["dialogKeyboard"]
    assert keyboard == {"focusStayedInside": True, "focusAfterEscape": "new-client", "dialogOpenAfterEscape": False}


def check_credentials_never_ambient(report: dict[str, Any]) -> None:
    """No cookie or storage holds them; every API request carries them itself with X-Requested-With, no cookie."""
    assert report["storage"] == {"cookie": "", "local": 0, "session": 0}
    api = [r for r in report["requests"] if "/_fluxauth/api/" in r["url"]]
    assert api, "the page made no API request"
    for request in api:
        assert request["authorization"], request
        assert request["requestedWith"] == "fluxauth-ui"
        assert not request["cookie"]
    for request in report["requests"]:
        if "/_fluxauth/ui/" in request["url"]:
            assert not request["authorization"], request  # the page's own files are fetched without them


def check_security_headers(report: dict[str, Any]) -> None:
    """The page: a strict CSP (no inline script or style, no framing), nosniff, no referrer."""
    headers = report["headers"]
    csp = headers["content-security-policy"]
    for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"):
        assert directive in csp
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"
    assert "set-cookie" not in headers
