"""What org, repo, ref, key and protocol names may look like: one set of rules for paths, settings and commands.

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

import re

from fluxauth.errors import InputError

ORG = r"[a-z0-9][a-z0-9-]{0,62}"
REPO = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
REF = r"[A-Za-z0-9][A-Za-z0-9._+@-]{0,199}"  # a branch, tag or commit id, one segment
KEY = r"[a-z0-9][a-z0-9._-]{0,63}"
PROTOCOL = r"[a-z0-9]{1,32}"

ORG_RULE = "lower-case letters, digits and '-' (at most 63)"
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
    return _check(_REPO, "repo name", "use letters, digits, '.', '_' and '-' (at most 100)", value)


def check_key_name(value: str) -> str:
    return _check(_KEY, "key name", "use lower-case letters, digits, '.', '_' and '-' (at most 64)", value)


def check_protocol(value: str) -> str:
    return _check(_PROTOCOL, "protocol name", "use lower-case letters and digits (at most 32)", value)


def split_repository(value: str) -> tuple[str, str]:
    """``org/repo`` into its two checked parts."""
    org, slash, repo = value.partition("/")
    if not slash:
        raise InputError(f"bad repository {value!r}: expected ORG/REPO")
    return check_org(org), check_repo(repo)
