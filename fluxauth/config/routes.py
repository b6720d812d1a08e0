"""``[[routes]]``: stock servers (TiTiler, xpublish, pygeoapi, MapProxy...) behind fluxauth, unchanged.

A route maps the compute URLs of one protocol (and optionally one org, or one
org's repo) onto an upstream URL template::

    [[routes]]
    protocol = "tiles"
    org = "acme"                      # optional: one org only
    repo = "era5"                     # optional: one repo of that org only
    marker = "tiles"                  # optional: the segment that ends the group, default the protocol
    upstream = "http://127.0.0.1:9000/datasets/{repo}/tiles/{path}"
    query = { url = "/data/{org}/{repo}/{ref}/{group}.tif" }   # optional: pinned parameters

Placeholders: ``{org}``, ``{repo}``, ``{ref}``, ``{group}`` (raw, ``/``-joined,
maybe empty) and ``{path}`` (the raw service path after the marker). The
template is checked here, once, so that a request can only fail to expand for
reasons of its own (``fluxauth.decision.routing``): ``{path}`` once, at the end
of the path, after a ``/``; placeholders only in the path (the origin is fixed,
its connections pooled); no query in the template (pinned parameters go in
``query``, where fluxauth percent-encodes them). Every error names the route
(``routes[2] (tiles acme)``) and the problem.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from fluxauth.errors import ConfigError

PLACEHOLDERS = frozenset({"org", "repo", "ref", "group", "path"})
_SPLIT = re.compile(r"\{([^{}]*)\}")
_MARKER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # org and repo slugs, as in paths
# Pinned parameter names as servers spell them: no character that any reader
# could decode or split differently (the client's names are compared decoded).
_PARAMETER = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_KEYS = frozenset({"protocol", "org", "repo", "marker", "upstream", "query"})

# A piece of a template: literals and placeholder names alternate, literals at
# the even positions ("/datasets/{repo}/" is ("/datasets/", "repo", "/")).
Pieces = tuple[str, ...]


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: memoized expansions key on it
class Route:
    """One ``[[routes]]`` entry, checked; ``fluxauth.decision.routing`` expands it per request."""

    index: int  # its position among the routes, from 1, for messages
    protocol: str
    org: str | None
    repo: str | None
    marker: str
    origin: str  # scheme://[userinfo@]host[:port] of the template: no placeholders
    authority: str  # host[:port], the Host the upstream is sent
    segments: tuple[Pieces, ...]  # the template's path up to "/{path}", split at "/"
    query: tuple[tuple[str, tuple[Pieces, ...]], ...]  # pinned: name, value split at "/"
    pinned: frozenset[str]  # the pinned parameter names, lower case: a client may send none of them

    def __repr__(self) -> str:  # never the origin's credentials
        return f"Route({self.name})"

    @property
    def name(self) -> str:
        """How messages name the route: ``routes[2] (tiles acme/era5)``."""
        return _name(self.index, self.protocol, self.org, self.repo)

    @property
    def specificity(self) -> tuple[str, str | None, str | None]:
        return (self.protocol, self.org, self.repo)


def _name(index: int, protocol: object, org: object, repo: object) -> str:
    scope = " ".join(str(part) for part in (protocol, org) if part) + (f"/{repo}" if repo and org else "")
    return f"routes[{index}] ({scope})" if scope else f"routes[{index}]"


def _pieces(where: str, text: str, allowed: frozenset[str]) -> Pieces:
    parts = tuple(_SPLIT.split(text))
    for literal in parts[0::2]:
        if "{" in literal or "}" in literal:
            raise ConfigError(f"{where}: unbalanced '{{' or '}}' in {text!r}")
    for name in parts[1::2]:
        if name not in PLACEHOLDERS:
            raise ConfigError(
                f"{where}: unknown placeholder {{{name}}} (known: {{org}} {{repo}} {{ref}} {{group}} {{path}})"
            )
        if name not in allowed:
            raise ConfigError(f"{where}: {{{name}}} is not allowed here")
    return parts


def _segments(where: str, text: str, allowed: frozenset[str]) -> tuple[Pieces, ...]:
    return tuple(_pieces(where, segment, allowed) for segment in text.split("/"))


def _text(where: str, raw: object) -> str:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"{where}: expected a non-empty string, got {raw!r}")
    return raw


def parse_route(index: int, raw: object, protocols: tuple[str, ...], redact: Callable[[str], str]) -> Route:
    """One ``[[routes]]`` table, checked; ``redact`` hides the userinfo of URLs in messages."""
    if not isinstance(raw, dict):
        raise ConfigError(f"routes[{index}]: expected a table, got {raw!r}")
    protocol = raw.get("protocol")
    org, repo = raw.get("org"), raw.get("repo")
    where = _name(index, protocol, org, repo)
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")
    if protocol not in protocols:
        raise ConfigError(
            f"{where}: protocol: expected one of the enabled protocols ({', '.join(protocols)}), got {protocol!r}"
        )
    assert isinstance(protocol, str)
    for key, value in (("org", org), ("repo", repo)):
        if value is not None and not (isinstance(value, str) and _NAME.fullmatch(value)):
            raise ConfigError(f"{where}: {key}: expected a name (letters, digits, '.', '_', '-'), got {value!r}")
    if repo is not None and org is None:
        raise ConfigError(f"{where}: repo needs org (a route names one org's repo)")
    marker = raw.get("marker", protocol)
    if not (isinstance(marker, str) and _MARKER.fullmatch(marker)) or ".." in marker:
        raise ConfigError(f"{where}: marker: expected one plain path segment, got {marker!r}")

    template = _text(f"{where}: upstream", raw.get("upstream"))
    shown = redact(template)
    parts = urlsplit(template)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ConfigError(f"{where}: upstream: expected an absolute http(s) URL, got {shown!r}")
    if "{" in parts.netloc or "}" in parts.netloc:
        raise ConfigError(f"{where}: upstream: placeholders belong in the path, not in the host: {shown!r}")
    if parts.query or parts.fragment or "?" in template or "#" in template:
        raise ConfigError(
            f"{where}: upstream: no query or fragment in the template (pinned parameters go in query): {shown!r}"
        )
    path = parts.path
    _pieces(f"{where}: upstream", path, PLACEHOLDERS)  # unknown placeholders first: "{paht}" is a typo
    if path.count("{path}") != 1 or not path.endswith("/{path}"):
        raise ConfigError(f"{where}: upstream: the template must end its path with /{{path}}, once: {shown!r}")
    if not path.isascii() or any(char in path for char in " \\%"):
        raise ConfigError(f"{where}: upstream: the path must be plain ASCII without spaces, '\\' or '%': {shown!r}")
    segments = _segments(f"{where}: upstream", path[: -len("/{path}")], PLACEHOLDERS - {"path"})
    if any(segment in ((".",), ("..",)) for segment in segments):
        raise ConfigError(f"{where}: upstream: no dot segments in the template: {shown!r}")

    query = raw.get("query", {})
    if not isinstance(query, dict):
        raise ConfigError(f"{where}: query: expected a table of parameter = value, got {query!r}")
    pinned: list[tuple[str, tuple[Pieces, ...]]] = []
    seen: set[str] = set()
    for name, value in query.items():
        if not _PARAMETER.fullmatch(name):
            raise ConfigError(f"{where}: query: parameter names are letters, digits, '_', '.', '-', got {name!r}")
        if name.lower() in seen:
            raise ConfigError(f"{where}: query: {name!r} is pinned twice (names are compared case-insensitively)")
        seen.add(name.lower())
        text = _text(f"{where}: query.{name}", value)
        pinned.append((name, _segments(f"{where}: query.{name}", text, PLACEHOLDERS - {"path"})))

    origin = f"{parts.scheme}://{parts.netloc}"
    return Route(
        index=index,
        protocol=protocol,
        org=org,
        repo=repo,
        marker=marker,
        origin=origin,
        authority=parts.netloc.rpartition("@")[2],
        segments=segments,
        query=tuple(pinned),
        pinned=frozenset(seen),
    )


def parse_routes(raw: object, protocols: tuple[str, ...], redact: Callable[[str], str]) -> tuple[Route, ...]:
    """The ``[[routes]]`` array: each route checked, and no two for the same protocol, org and repo.

    Items that are ``Route`` already (settings built in code, a route added to
    parsed ones) are kept as they are.
    """
    if not isinstance(raw, list):
        raise ConfigError(f"routes: expected an array of tables ([[routes]]), got {raw!r}")
    routes = tuple(
        item if isinstance(item, Route) else parse_route(index, item, protocols, redact)
        for index, item in enumerate(raw, 1)
    )
    first: dict[tuple[str, str | None, str | None], Route] = {}
    for route in routes:
        other = first.setdefault(route.specificity, route)
        if other is not route:
            raise ConfigError(f"{route.name}: serves the same requests as {other.name} (same protocol, org and repo)")
    return routes
