"""Human durations: ``90s``, ``15m``, ``2h``, ``7d``, ``52w`` and combinations like ``1h30m``."""

from __future__ import annotations

import re

from fluxauth.errors import InputError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# [0-9], not \d: \d also matches other scripts' digits ("٣d"), and str.isdigit()
# accepts "²", which int() then refuses with a ValueError instead of an InputError.
_PART = re.compile(r"([0-9]{1,9})([smhdw])")
# What parse_duration reads (after stripping and lower-casing): also the JSON
# Schema pattern of durations in the management API's bodies.
DURATION_PATTERN = r"^(?:[0-9]{1,10}|(?:[0-9]{1,9}[smhdw])+)$"
_WHOLE = re.compile(DURATION_PATTERN)


def parse_duration(text: str) -> int:
    """Return the number of seconds that ``text`` names, or raise ``InputError``.

    A bare number is read as seconds.
    """
    value = text.strip().lower()
    if not _WHOLE.fullmatch(value):
        raise InputError(f"bad duration {text!r}: use a number with a unit s, m, h, d or w, e.g. 2h or 90d")
    if value.isdigit():
        return int(value)
    return sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(value))


def format_duration(seconds: float) -> str:
    """The shortest exact human form of ``seconds`` (``7200`` -> ``2h``)."""
    whole = int(seconds)
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if whole and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"
