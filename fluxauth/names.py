"""What org, repo, ref, key, protocol and host names may look like: one set of rules for paths, settings and commands.

The path parser (``decision/target.py``) decides on these segments byte for
byte, the settings check protocol names, and the command line and the
management API check what they create, all against the patterns here. So a
path can only name an org, repo or key that could have been created, and
nothing can be created that a path could not name.

Every name is a closed alphabet of plain ASCII so that no reader can decode,
fold or split it differently; and none contains ``..`` or ends with ``.``:
``era5..`` glued to what follows is ``era5/..`` to a proxy or alias that
strips ``/.../era5`` as a string prefix (nginx's off-by-slash alias, Traefik
StripPrefix CVE-2026-48020), and Windows drops a trailing dot (git refs
cannot end with one either).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from fluxauth.errors import InputError

ORG = r"[a-z0-9][a-z0-9-]{0,62}"
REPO = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
REF = r"[A-Za-z0-9][A-Za-z0-9._+@-]{0,199}"  # a branch, tag or commit id, one segment
KEY = r"[a-z0-9][a-z0-9._-]{0,63}"
PROTOCOL = r"[a-z0-9]{1,32}"
# Where compute URLs live: /v1/services/{protocol}/{org}/{repo}/{ref}/{group...}/...
SERVICES = b"/v1/services/"

ORG_RULE = "lower-case letters, digits and '-' (at most 63)"
REPO_RULE = "letters, digits, '.', '_' and '-' (at most 100)"
KEY_RULE = "lower-case letters, digits, '.', '_' and '-' (at most 64)"


@dataclass(frozen=True, slots=True)
class Schema:
    """A name rule as JSON Schema says it (the management API's openapi.json): pattern and longest length.

    One anchored pattern without look-arounds (which JSON Schema readers do
    not all have) stands for the pattern above and ``plain`` together: every
    ``.`` is followed by a character that is not one. ``tests/test_names.py``
    holds the two forms to each other.
    """

    pattern: str
    max_length: int

    def json(self) -> dict[str, object]:
        return {"type": "string", "pattern": self.pattern, "maxLength": self.max_length}


ORG_SCHEMA = Schema(r"^[a-z0-9][a-z0-9-]*$", 63)
REPO_SCHEMA = Schema(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]|\.[A-Za-z0-9_-])*$", 100)
KEY_SCHEMA = Schema(r"^[a-z0-9](?:[a-z0-9_-]|\.[a-z0-9_-])*$", 64)
_ORG = re.compile(ORG)
_REPO = re.compile(REPO)
_KEY = re.compile(KEY)
_PROTOCOL = re.compile(PROTOCOL)


def plain(value: str | bytes) -> bool:
    """Whether ``value`` has neither ``..`` nor a trailing ``.`` (the rule every name adds to its pattern)."""
    if isinstance(value, str):
        value = value.encode("ascii", "replace")
    return b".." not in value and not value.endswith(b".")


def _check(pattern: re.Pattern[str], what: str, rule: str, value: str) -> str:
    if not pattern.fullmatch(value) or not plain(value):
        raise InputError(f"bad {what} {value!r}: {rule}")
    return value


def check_org(value: str) -> str:
    return _check(_ORG, "org name", f"use {ORG_RULE}", value)


def check_repo(value: str) -> str:
    return _check(_REPO, "repo name", f"use {REPO_RULE}", value)


def check_key_name(value: str) -> str:
    return _check(_KEY, "key name", f"use {KEY_RULE}", value)


def check_protocol(value: str) -> str:
    return _check(_PROTOCOL, "protocol name", "use lower-case letters and digits (at most 32)", value)


def split_repository(value: str) -> tuple[str, str]:
    """``org/repo`` into its two checked parts."""
    org, slash, repo = value.partition("/")
    if not slash:
        raise InputError(f"bad repository {value!r}: expected ORG/REPO")
    return check_org(org), check_repo(repo)


# -- hosts ------------------------------------------------------------------------
# A host as a Host header may name it (decision/hosts.py) and public_hosts may
# list it: a DNS-style name (``_`` allowed, as container names have it), which
# covers IPv4 addresses, or an IPv6 literal; a port from 1 to 65535.
_NAME = rb"[A-Za-z0-9_][A-Za-z0-9_-]{0,62}(?:\.[A-Za-z0-9_-]{1,63})*\.?"
_HOST = re.compile(rb"(?P<name>" + _NAME + rb"|\[(?P<ipv6>[0-9A-Fa-f:.]{2,45})\])(?::(?P<port>[0-9]{1,5}))?")
_HOST_NAME = re.compile(_NAME)
MAX_HOST_NAME = 253  # RFC 1035 §2.3.4, without the trailing dot


def host_name(value: bytes) -> bytes | None:
    """The host in ``value`` (lower case, no port, no trailing dot) if ``value`` is one ``host[:port]``, else None."""
    match = _HOST.fullmatch(value)
    if match is None:
        return None
    port = match["port"]
    if port is not None and not 0 < int(port) <= 65535:
        return None
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"].decode("ascii"))
        except ValueError:
            return None
        return match["name"].lower()
    name = match["name"].rstrip(b".").lower()
    return name if len(name) <= MAX_HOST_NAME else None


def check_host_pattern(value: str) -> str:
    """A ``public_hosts`` entry (``maps.example.org``, ``*.example.org``, ``[::1]``) in lower case, no trailing dot."""
    text = value.strip().lower().rstrip(".")
    name = text[2:] if text.startswith("*.") else text
    if text.isascii() and name.startswith("[") and name.endswith("]") and host_name(name.encode()) == name.encode():
        return text
    if text.isascii() and _HOST_NAME.fullmatch(name.encode()) and len(name) <= MAX_HOST_NAME:
        return text
    raise InputError(f"bad host name {value!r}: expected a name such as maps.example.org or *.example.org, no port")
