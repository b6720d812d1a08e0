"""What org, repo, key and protocol names may look like."""

from __future__ import annotations

import re

from fluxauth.errors import InputError

_ORG = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_KEY = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def _check(pattern: re.Pattern[str], what: str, rule: str, value: str) -> str:
    # No "..", no trailing ".": paths naming them are refused as ambiguous (fluxauth/decision/target.py).
    if not pattern.fullmatch(value) or ".." in value or value.endswith("."):
        raise InputError(f"bad {what} {value!r}: {rule}")
    return value


def check_org(value: str) -> str:
    return _check(_ORG, "org name", "use lower-case letters, digits and '-' (at most 63)", value)


def check_repo(value: str) -> str:
    return _check(_REPO, "repo name", "use letters, digits, '.', '_' and '-' (at most 100)", value)


def check_key_name(value: str) -> str:
    return _check(_KEY, "key name", "use lower-case letters, digits, '.', '_' and '-' (at most 64)", value)


def split_repository(value: str) -> tuple[str, str]:
    """``org/repo`` into its two checked parts."""
    org, slash, repo = value.partition("/")
    if not slash:
        raise InputError(f"bad repository {value!r}: expected ORG/REPO")
    return check_org(org), check_repo(repo)
