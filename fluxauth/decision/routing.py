"""Which upstream request a compute URL becomes: ``[[routes]]`` expanded for one request.

``/v1/services/{protocol}/{org}/{repo}/{ref}/{group...}/{marker}/{path...}?{query}``:
the group is what lies between ``ref`` and the first segment equal to the
route's marker (maybe nothing); the service path is everything after it, its
query kept. Both are the raw bytes that ``fluxauth.decision.target`` checked
already: no dot segment in any spelling, no encoded ``/`` or ``\\``, so the
tail cannot climb out of the template's prefix (xpublish's ``/datasets``, the
list of every dataset, stays out of reach).

Pinned parameters (a route's ``query``) are set by fluxauth, their values
percent-encoded whole, so a group holding ``&url=`` cannot add a parameter. A
client that sends one of them itself is refused (400): names are compared as
any server might read them (percent-decoded, ``+`` as a space, any case,
``url[]`` as ``url``), so ``%75rl=`` is ``url=``. Otherwise a key holder could
choose which file the server opens (TiTiler opens whatever ``url=`` says).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import quote, unquote

from fluxauth.config.routes import Pieces, Route
from fluxauth.errors import NotComputePath, PathError
from fluxauth.names import SERVICES

_MAX_DECODES = 4
_FOUND_MAX = 10_000  # (protocol, org, repo) lookups remembered; forgotten all at once beyond
_QUERY_SEPARATORS = re.compile(rb"[&;]")  # some servers split on ';' too (old Python, Java servlets)


class PinnedParameter(PathError):
    """The client sent a parameter that the route pins: 400."""

    error = "pinned_parameter"


class Routed(NamedTuple):
    """What a routed request becomes upstream, and what its self-URLs map back to.

    A named tuple, not a frozen dataclass: built for every routed tile, and a
    frozen dataclass's ``__init__`` costs four times as much.
    """

    route: Route
    path: bytes  # the upstream request path: the template expanded, then the service path
    query: bytes  # the client's query, then the pinned parameters
    base: bytes  # the upstream path up to the service path (ends with "/")
    public: bytes  # the public path up to the service path: .../{ref}/{group}/{marker}/


def parameter_name(name: str) -> str:
    """A query parameter's name as the most liberal server would read it: decoded, lower case, no ``[...]``."""
    for _ in range(_MAX_DECODES):
        decoded = unquote(name.replace("+", " "))
        if decoded == name:
            break
        name = decoded
    return name.split("[", 1)[0].strip().lower()


class Routes:
    """The routes of the settings, looked up most specific first: org and repo, then org, then protocol."""

    def __init__(self, routes: tuple[Route, ...], upstreams: Mapping[str, str]) -> None:
        self._routes = {route.specificity: route for route in routes}
        # Protocols that routes serve and no [upstreams] entry does: a request
        # that none of their routes takes is 404 rather than the default upstream's.
        self._only_routed = frozenset(route.protocol for route in routes if route.protocol not in upstreams)
        # (protocol, org, repo) -> its route: one dict lookup per request instead of up to three.
        self._found: dict[tuple[str, str, str], Route | None] = {}

    def __bool__(self) -> bool:
        return bool(self._routes)

    def find(self, protocol: str, org: str, repo: str) -> Route | None:
        key = (protocol, org, repo)
        try:
            return self._found[key]
        except KeyError:
            pass
        routes = self._routes
        route = routes.get(key) or routes.get((protocol, org, None)) or routes.get((protocol, None, None))
        if len(self._found) >= _FOUND_MAX:
            self._found.clear()
        self._found[key] = route
        return route

    def routed(self, protocol: str, org: str, repo: str, ref: str, rest: bytes, query: bytes) -> Routed | None:
        """The upstream request of a checked compute URL, if a route takes it; raises ``PathError`` (404, 400).

        ``rest`` is the raw path after ``ref/``. Called by
        ``fluxauth.decision.target.parse_target`` once the path passed its checks.
        """
        route = self.find(protocol, org, repo)
        if route is None:
            if protocol in self._only_routed:
                raise NotComputePath("no route serves this repository")
            return None
        return expand(route, protocol, org, repo, ref, rest, query)


def expand(route: Route, protocol: str, org: str, repo: str, ref: str, rest: bytes, query: bytes) -> Routed:
    """Expand ``route`` for one URL: its upstream path and query, and the bases its self-URLs map between."""
    split = _split_at_marker(rest, route.marker.encode("ascii"))
    if split is None:
        raise NotComputePath(f"no service path: the group ends at a segment {route.marker!r}")
    group, tail = split
    if query and route.query:
        _refuse_pinned(route, query)
    base, pinned, public = _expand(route, protocol, org, repo, ref, group)
    upstream_query = query + b"&" + pinned if query and pinned else query or pinned
    return Routed(route, base + tail, upstream_query, base, public)


def _split_at_marker(rest: bytes, marker: bytes) -> tuple[bytes, bytes] | None:
    """``rest`` (after ``ref/``) as the group before the first segment equal to ``marker``, and what follows it."""
    if rest == marker or rest.startswith(marker + b"/"):
        return b"", rest[len(marker) + 1 :]
    inner = b"/" + marker + b"/"
    at = rest.find(inner)  # the first marker segment inside; one at the very end comes after all of those
    if at >= 0:
        return rest[:at], rest[at + len(inner) :]
    if rest.endswith(inner[:-1]):
        return rest[: -len(inner) + 1], b""
    return None


def _refuse_pinned(route: Route, query: bytes) -> None:
    pinned = route.pinned
    for parameter in _QUERY_SEPARATORS.split(query):
        name = parameter.split(b"=", 1)[0]
        # latin-1 never fails; a query that is not ASCII is refused by check_query anyway.
        if name and parameter_name(name.decode("latin-1")) in pinned:
            raise PinnedParameter(
                f"the parameter {name.decode('latin-1')!r} is set by the server's route, not by clients"
            )


# A tile pyramid asks for thousands of tiles of the same few groups: the
# template is expanded once per (route, org, repo, ref, group), not per tile.
@functools.lru_cache(maxsize=4096)
def _expand(route: Route, protocol: str, org: str, repo: str, ref: str, group: bytes) -> tuple[bytes, bytes, bytes]:
    """The upstream path up to the service path, the pinned parameters as a query string, the public path."""
    values = {"org": org, "repo": repo, "ref": ref, "group": group.decode("ascii")}
    base = "/".join(_fill(segment, values) for segment in route.segments) + "/"
    pinned = "&".join(
        f"{quote(name, safe='')}={quote('/'.join(_fill(part, values) for part in value), safe='')}"
        for name, value in route.query
    )
    public = f"{SERVICES.decode()}{protocol}/{org}/{repo}/{ref}/{values['group'] + '/' if group else ''}{route.marker}/"
    return base.encode("ascii"), pinned.encode("ascii"), public.encode("ascii")


def _fill(pieces: Pieces, values: Mapping[str, str]) -> str:
    """One segment of a template with its placeholders filled; 404 if all of them came out empty.

    ``/datasets/{group}/tiles`` or ``{group}.tif`` with an empty group would
    name another thing than the route means (``/datasets//tiles``, ``.tif``).
    """
    if len(pieces) == 1:
        return pieces[0]
    filled = [values[name] for name in pieces[1::2]]
    if not any(filled):
        names = ", ".join(f"{{{name}}}" for name in pieces[1::2])
        raise NotComputePath(f"this service needs {names} in the URL, and it is empty here")
    out = list(pieces)
    out[1::2] = filled
    return "".join(out)
