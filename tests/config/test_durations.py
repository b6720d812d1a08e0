"""Tests for fluxauth.config.durations: human durations in and out."""

from __future__ import annotations

import pytest

from fluxauth.config.durations import format_duration, parse_duration
from fluxauth.errors import InputError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0),
        ("90", 90),
        ("1234567890", 1_234_567_890),
        ("0s", 0),
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("7d", 604_800),
        ("52w", 52 * 604_800),
        ("90d", 90 * 86_400),
        ("1h30m", 5400),
        ("1d2h3m4s", 86_400 + 7200 + 180 + 4),
        ("2H", 7200),
        ("  2h  ", 7200),
        ("007m", 420),
    ],
)
def test_parse_duration_accepts(text: str, seconds: int) -> None:
    """A number with units (or a bare number of seconds) gives its seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("h", id="unit-only"),
        pytest.param("2 weeks", id="words"),
        pytest.param("-5", id="negative"),
        pytest.param("-5m", id="negative-unit"),
        pytest.param("+5", id="plus"),
        pytest.param("1.5h", id="fraction"),
        pytest.param("2 h", id="space-inside"),
        pytest.param("1h 30m", id="space-between"),
        pytest.param("2y", id="unknown-unit"),
        pytest.param("2ms", id="milliseconds"),
        pytest.param("h2", id="unit-first"),
        pytest.param("12345678901", id="11-digits"),
        pytest.param("1234567890s", id="10-digits-with-unit"),
        pytest.param("²", id="superscript-two"),
        pytest.param("٣", id="arabic-indic-digit"),
        pytest.param("٣h", id="arabic-indic-digit-with-unit"),
        pytest.param("\uff11\uff12", id="fullwidth-digits"),
        pytest.param("2h\n3m", id="newline"),
        pytest.param("0x10", id="hex"),
        pytest.param("1e3", id="exponent"),
        pytest.param("1_000", id="underscore"),
    ],
)
def test_parse_duration_refuses_with_input_error(text: str) -> None:
    """Anything else is an InputError that quotes the bad value."""
    with pytest.raises(InputError, match="bad duration") as caught:
        parse_duration(text)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (1, "1s"),
        (59, "59s"),
        (60, "1m"),
        (90, "90s"),
        (5400, "90m"),
        (7200, "2h"),
        (86_400, "1d"),
        (90 * 86_400, "90d"),
        (604_800, "1w"),
        (52 * 604_800, "52w"),
        (86_401, "86401s"),
        (7200.9, "2h"),
    ],
)
def test_format_duration_shortest_exact_form(seconds: float, text: str) -> None:
    """Whole seconds are shown in the largest unit that divides them exactly."""
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0, 1, 61, 3600, 5400, 86_400, 86_401, 604_800, 2 * 365 * 86_400])
def test_format_duration_round_trips(seconds: int) -> None:
    """What format_duration writes, parse_duration reads back to the same seconds."""
    assert parse_duration(format_duration(seconds)) == seconds
