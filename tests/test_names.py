"""Tests for fluxauth.names: what org, repo and key names may look like."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxauth.errors import InputError
from fluxauth.names import (
    KEY_SCHEMA,
    ORG_SCHEMA,
    REPO_SCHEMA,
    Schema,
    check_key_name,
    check_org,
    check_repo,
    split_repository,
)

Check = Callable[[str], str]


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (check_org, "acme"),
        (check_org, "a"),
        (check_org, "0rg-2"),
        (check_org, "a" * 63),
        (check_repo, "era5"),
        (check_repo, "ERA5_v1.0-final"),
        (check_repo, "a.b"),
        (check_repo, "a" * 100),
        (check_key_name, "ci"),
        (check_key_name, "tile-server.prod_1"),
        (check_key_name, "k" * 64),
    ],
)
def test_check_name_accepts(check: Check, value: str) -> None:
    """A name in its alphabet and length is returned unchanged."""
    assert check(value) == value


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (check_org, ""),
        (check_org, "Acme"),
        (check_org, "-acme"),
        (check_org, "ac_me"),
        (check_org, "ac.me"),
        (check_org, "ac me"),
        (check_org, "acme/x"),
        (check_org, "ácme"),
        (check_org, "acme\n"),
        (check_org, "a" * 64),
        (check_repo, ""),
        (check_repo, "."),
        (check_repo, ".."),
        (check_repo, "a..b"),
        (check_repo, ".hidden"),
        (check_repo, "_era5"),
        (check_repo, "era5/x"),
        (check_repo, "era 5"),
        (check_repo, "era5;x"),
        (check_repo, "era%35"),
        (check_repo, "a" * 101),
        (check_key_name, ""),
        (check_key_name, "CI"),
        (check_key_name, "ci@acme"),
        (check_key_name, "-ci"),
        (check_key_name, "ci..prod"),
        (check_key_name, "k" * 65),
    ],
)
def test_check_name_refuses(check: Check, value: str) -> None:
    """A name outside its alphabet or length is an InputError that quotes it."""
    with pytest.raises(InputError) as caught:
        check(value)
    assert repr(value) in str(caught.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("acme/era5", ("acme", "era5")), ("a/B.c-d_e", ("a", "B.c-d_e"))],
)
def test_split_repository_accepts(value: str, expected: tuple[str, str]) -> None:
    """``org/repo`` splits into its checked parts."""
    assert split_repository(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("acme", "expected ORG/REPO"),
        ("", "expected ORG/REPO"),
        ("acme/", "bad repo name"),
        ("/era5", "bad org name"),
        ("acme/era5/x", "bad repo name"),
        ("Acme/era5", "bad org name"),
        ("acme/..", "bad repo name"),
    ],
)
def test_split_repository_refuses(value: str, message: str) -> None:
    """A repository that is not ``org/repo`` with valid parts says which part is wrong."""
    with pytest.raises(InputError, match=message):
        split_repository(value)


@pytest.mark.parametrize("value", ["era5.", "a.", "x..y"])
def test_check_repo_refuses_names_paths_would_refuse(value: str) -> None:
    """A repo ending in '.' or holding '..' is refused at creation: its paths are refused as ambiguous."""
    with pytest.raises(InputError):
        check_repo(value)


_SCHEMA_CHECKS = [(check_org, ORG_SCHEMA), (check_repo, REPO_SCHEMA), (check_key_name, KEY_SCHEMA)]


def _schema_accepts(schema: Schema, value: str) -> bool:
    return len(value) <= schema.max_length and re.fullmatch(schema.pattern, value) is not None


@pytest.mark.parametrize(("check", "schema"), _SCHEMA_CHECKS, ids=["org", "repo", "key"])
@given(value=st.text(alphabet="aZ09._-@/ .é", max_size=70) | st.sampled_from(["a..b", "a.", ".a", "a.b", "a" * 64]))
@settings(max_examples=400, deadline=None)
def test_schema_form_is_the_same_rule(check: Check, schema: Schema, value: str) -> None:
    """The JSON Schema form of each rule (openapi.json) accepts exactly what ``check_*`` accepts."""
    try:
        check(value)
        accepted = True
    except InputError:
        accepted = False
    assert _schema_accepts(schema, value) == accepted
