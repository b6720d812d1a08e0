"""Tests for fluxauth.config.routes: ``[[routes]]`` checked once, each error naming the route and the problem."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from fluxauth.config.routes import Route, parse_routes
from fluxauth.config.settings import DEFAULT_PROTOCOLS, load_settings, redact_url
from fluxauth.errors import ConfigError

TITILER = {
    "protocol": "tiles",
    "org": "acme",
    "upstream": "http://127.0.0.1:9000/cog/{path}",
    "query": {"url": "/data/{org}/{repo}/{ref}/{group}.tif"},
}


def parse(*routes: dict[str, Any]) -> tuple[Route, ...]:
    return parse_routes(list(routes), DEFAULT_PROTOCOLS, redact_url)


def test_parse_routes_titiler_block() -> None:
    """A route with org and pinned parameters: its pieces, origin, Host and pinned names."""
    (route,) = parse(TITILER)
    assert (route.protocol, route.org, route.repo, route.marker) == ("tiles", "acme", None, "tiles")
    assert route.origin == "http://127.0.0.1:9000"
    assert route.authority == "127.0.0.1:9000"
    assert route.segments == (("",), ("cog",))
    assert route.query == (
        ("url", (("",), ("data",), ("", "org", ""), ("", "repo", ""), ("", "ref", ""), ("", "group", ".tif"))),
    )
    assert route.pinned == frozenset({"url"})
    assert route.name == "routes[1] (tiles acme)"


def test_parse_routes_defaults_and_placeholders_in_path() -> None:
    """The marker defaults to the protocol; placeholders may share a segment with literals."""
    (route,) = parse({"protocol": "wms", "upstream": "https://xp.internal/datasets/{repo}-{ref}/wms/{path}"})
    assert route.marker == "wms"
    assert (route.org, route.repo, route.query, route.pinned) == (None, None, (), frozenset())
    assert route.segments == (("",), ("datasets",), ("", "repo", "-", "ref", ""), ("wms",))
    assert route.name == "routes[1] (wms)"


def test_parse_routes_upstream_at_the_root() -> None:
    """``http://host:port/{path}``: the base is "/"."""
    (route,) = parse({"protocol": "tiles", "upstream": "http://127.0.0.1:9000/{path}", "marker": "cog"})
    assert route.segments == (("",),)
    assert route.marker == "cog"


def test_route_repr_hides_the_upstream_credentials() -> None:
    """An upstream URL's userinfo goes to the upstream, never into a repr or a message."""
    (route,) = parse({"protocol": "tiles", "upstream": "http://fluxauth:s3cret@tiles.internal/{path}"})
    assert "s3cret" not in repr(route)
    assert route.authority == "tiles.internal"
    with pytest.raises(ConfigError) as raised:
        parse({"protocol": "tiles", "upstream": "http://fluxauth:s3cret@tiles.internal/x"})
    assert "s3cret" not in str(raised.value)


BAD = [
    pytest.param(
        {"protocol": "tiles", "upstream": "http://h/{paht}"},
        r"routes\[1\] \(tiles\): .*unknown placeholder \{paht\}",
        id="unknown-placeholder",
    ),
    pytest.param(
        {"protocol": "tiles", "upstream": "http://h/x/{org}"}, r"must end its path with /\{path\}", id="no-path"
    ),
    pytest.param(
        {"protocol": "tiles", "upstream": "http://h/{path}/x/{path}"},
        r"must end its path with /\{path\}, once",
        id="path-twice",
    ),
    pytest.param(
        {"protocol": "tiles", "upstream": "http://h/x{path}"}, r"must end its path with /\{path\}", id="path-glued"
    ),
    pytest.param({"protocol": "tiles", "upstream": "http://h/{path}/tail"}, r"must end its path", id="path-not-last"),
    pytest.param(
        {"protocol": "tiles", "upstream": "/cog/{path}"}, r"expected an absolute http\(s\) URL", id="relative"
    ),
    pytest.param({"protocol": "tiles", "upstream": "127.0.0.1:9000/{path}"}, r"absolute http\(s\) URL", id="no-scheme"),
    pytest.param({"protocol": "tiles", "upstream": "ftp://h/{path}"}, r"absolute http\(s\) URL", id="ftp"),
    pytest.param({"protocol": "tiles", "upstream": "http://h:99999/{path}"}, r"absolute http\(s\) URL", id="bad-port"),
    pytest.param(
        {"protocol": "tiles", "upstream": "http://{org}.internal/{path}"},
        r"placeholders belong in the path",
        id="placeholder-in-host",
    ),
    pytest.param(
        {"protocol": "tiles", "upstream": "http://h/{path}?url=x"}, r"no query or fragment", id="query-in-template"
    ),
    pytest.param({"protocol": "tiles", "upstream": "http://h/a/../{path}"}, r"no dot segments", id="dot-segment"),
    pytest.param({"protocol": "tiles", "upstream": "http://h/a%2F/{path}"}, r"plain ASCII", id="escape"),
    pytest.param({"protocol": "tiles", "upstream": "http://h/{repo/{path}"}, r"unbalanced", id="unbalanced"),
    pytest.param({"protocol": "tiles", "upstream": 7}, r"upstream: expected a non-empty string", id="not-a-string"),
    pytest.param({"protocol": "tiles"}, r"upstream: expected a non-empty string", id="no-upstream"),
    pytest.param(
        {"upstream": "http://h/{path}"}, r"routes\[1\]: protocol: expected one of the enabled", id="no-protocol"
    ),
    pytest.param(
        {"protocol": "wcs", "upstream": "http://h/{path}"},
        r"protocol: expected one of the enabled",
        id="unknown-protocol",
    ),
    pytest.param(
        {"protocol": "tiles", "repo": "era5", "upstream": "http://h/{path}"}, r"repo needs org", id="repo-without-org"
    ),
    pytest.param(
        {"protocol": "tiles", "org": "a/b", "upstream": "http://h/{path}"}, r"org: expected a name", id="bad-org"
    ),
    pytest.param(
        {"protocol": "tiles", "marker": "a/b", "upstream": "http://h/{path}"},
        r"marker: expected one plain path segment",
        id="marker-slash",
    ),
    pytest.param({"protocol": "tiles", "marker": "..", "upstream": "http://h/{path}"}, r"marker", id="marker-dots"),
    pytest.param(
        {"protocol": "tiles", "upstream": "http://h/{path}", "query": {"url": "{path}"}},
        r"query.url: \{path\} is not allowed here",
        id="path-in-query",
    ),
    pytest.param(
        {"protocol": "tiles", "upstream": "http://h/{path}", "query": {"url": "{nope}"}},
        r"query.url: unknown placeholder \{nope\}",
        id="unknown-in-query",
    ),
    pytest.param(
        {"protocol": "tiles", "upstream": "http://h/{path}", "query": {"url": ""}},
        r"query.url: expected a non-empty string",
        id="empty-value",
    ),
    pytest.param(
        {"protocol": "tiles", "upstream": "http://h/{path}", "query": {"u rl": "x"}},
        r"parameter names are",
        id="bad-name",
    ),
    pytest.param(
        {"protocol": "tiles", "upstream": "http://h/{path}", "query": {"url": "a", "URL": "b"}},
        r"pinned twice",
        id="pinned-twice",
    ),
    pytest.param(
        {"protocol": "tiles", "upstream": "http://h/{path}", "query": ["url"]},
        r"query: expected a table",
        id="query-not-table",
    ),
    pytest.param(
        {"protocol": "tiles", "upstream": "http://h/{path}", "colour": "red"}, r"unknown key 'colour'", id="unknown-key"
    ),
]


@pytest.mark.parametrize(("raw", "message"), BAD)
def test_parse_routes_bad_route_names_route_and_problem(raw: dict[str, Any], message: str) -> None:
    """Each bad route is one ConfigError that names the route and says what is wrong."""
    with pytest.raises(ConfigError, match=message) as raised:
        parse(raw)
    assert str(raised.value).startswith("routes[1]")
    assert "\n" not in str(raised.value)


def test_parse_routes_same_specificity_twice_names_both() -> None:
    """Two routes for the same protocol, org and repo: the second is refused, naming the first."""
    with pytest.raises(
        ConfigError, match=re.escape("routes[3] (tiles acme): serves the same requests as routes[1] (tiles acme)")
    ):
        parse(TITILER, {**TITILER, "org": "other"}, {**TITILER, "upstream": "http://127.0.0.1:9001/{path}"})


def test_parse_routes_different_specificities_coexist() -> None:
    """Protocol, org and org+repo routes for the same protocol are three different routes."""
    routes = parse(
        {"protocol": "tiles", "upstream": "http://h/{path}"},
        {"protocol": "tiles", "org": "acme", "upstream": "http://h/{path}"},
        {"protocol": "tiles", "org": "acme", "repo": "era5", "upstream": "http://h/{path}"},
    )
    assert [route.specificity for route in routes] == [
        ("tiles", None, None),
        ("tiles", "acme", None),
        ("tiles", "acme", "era5"),
    ]


def test_parse_routes_not_an_array() -> None:
    with pytest.raises(ConfigError, match=r"routes: expected an array of tables"):
        parse_routes({"protocol": "tiles"}, DEFAULT_PROTOCOLS, redact_url)


def test_load_settings_reads_routes_from_toml(tmp_path: Path) -> None:
    """``[[routes]]`` in the file, with the protocols the file enables."""
    path = tmp_path / "fluxauth.toml"
    path.write_text(
        'protocols = ["tiles", "wms", "edr"]\n'
        "[[routes]]\n"
        'protocol = "edr"\n'
        'upstream = "http://127.0.0.1:9100/edr/{path}"\n'
        "[[routes]]\n"
        'protocol = "tiles"\n'
        'org = "acme"\n'
        'upstream = "http://127.0.0.1:9000/cog/{path}"\n'
        'query = { url = "/data/{org}/{repo}.tif" }\n'
    )
    settings = load_settings(path, environ={})
    assert [route.name for route in settings.routes] == ["routes[1] (edr)", "routes[2] (tiles acme)"]
    assert settings.max_metadata_body == 8 * 1024 * 1024
    assert "routes=['routes[1] (edr)', 'routes[2] (tiles acme)']" in repr(settings)


def test_load_settings_route_for_a_protocol_not_enabled(tmp_path: Path) -> None:
    """A route's protocol must be one the settings enable."""
    path = tmp_path / "fluxauth.toml"
    path.write_text('protocols = ["wms"]\n[[routes]]\nprotocol = "tiles"\nupstream = "http://h/{path}"\n')
    with pytest.raises(
        ConfigError, match=r"routes\[1\] \(tiles\): protocol: expected one of the enabled protocols \(wms\)"
    ):
        load_settings(path, environ={})


def test_load_settings_routes_from_environment_json() -> None:
    """FLUXAUTH_ROUTES holds the same tables as JSON."""
    settings = load_settings(environ={"FLUXAUTH_ROUTES": json.dumps([TITILER])})
    assert [route.name for route in settings.routes] == ["routes[1] (tiles acme)"]
    with pytest.raises(ConfigError, match=r"routes: expected a JSON array"):
        load_settings(environ={"FLUXAUTH_ROUTES": "[[routes]]"})


def test_load_settings_max_metadata_body_bounds() -> None:
    assert load_settings(environ={"FLUXAUTH_MAX_METADATA_BODY": "65536"}).max_metadata_body == 65536
    with pytest.raises(ConfigError, match=r"max_metadata_body: expected a whole number >= 1024"):
        load_settings(environ={"FLUXAUTH_MAX_METADATA_BODY": "10"})
