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
from dataclasses import dataclass
from urllib.parse import quote, unquote

from fluxauth.config.routes import Pieces, Route
from fluxauth.decision.target import PREFIX, Target
from fluxauth.errors import NotComputePath, PathError

_MAX_DECODES = 4
_QUERY_SEPARATORS = re.compile(rb"[&;]")  # some servers split on ';' too (old Python, Java servlets)


class PinnedParameter(PathError):
    """The client sent a parameter that the route pins: 400."""

    error = "pinned_parameter"


@dataclass(frozen=True, slots=True)
class Routed:
    """What a routed request becomes upstream, and what its self-URLs map back to."""

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

    def __bool__(self) -> bool:
        return bool(self._routes)

    def find(self, protocol: str, org: str, repo: str) -> Route | None:
        routes = self._routes
        return (
            routes.get((protocol, org, repo)) or routes.get((protocol, org, None)) or routes.get((protocol, None, None))
        )

    def route(self, target: Target, query: bytes) -> Target:
        """``target`` with its upstream request, if a route takes it; raises ``PathError`` (404, 400)."""
        route = self.find(target.protocol, target.org, target.repo)
        if route is None:
            if target.protocol in self._only_routed:
                raise NotComputePath("no route serves this repository")
            return target
        return route_target(route, target, query)


def route_target(route: Route, target: Target, query: bytes) -> Target:
    """Expand ``route`` for ``target``: its upstream path and query, and the bases its self-URLs map between."""
    raw_path = target.raw_path
    decided = len(PREFIX) + len(target.protocol) + len(target.org) + len(target.repo) + len(target.ref) + 4
    segments = raw_path[decided:].split(b"/") if len(raw_path) > decided else []
    marker = route.marker.encode("ascii")
    try:
        at = segments.index(marker)
    except ValueError:
        raise NotComputePath(f"no service path: the group ends at a segment {route.marker!r}") from None
    group = b"/".join(segments[:at])
    tail = b"/".join(segments[at + 1 :])
    if query and route.query:
        _refuse_pinned(route, query)
    base, pinned = _expand(route, target.org, target.repo, target.ref, group)
    public = raw_path[: decided + len(group) + (1 if group else 0) + len(marker)] + b"/"
    upstream_query = query + b"&" + pinned if query and pinned else query or pinned
    return Target(
        target.protocol,
        target.org,
        target.repo,
        target.ref,
        raw_path,
        Routed(route, base + tail, upstream_query, base, public),
    )


def _refuse_pinned(route: Route, query: bytes) -> None:
    pinned = route.pinned
    for parameter in _QUERY_SEPARATORS.split(query):
        name = parameter.split(b"=", 1)[0]
        if name and parameter_name(name.decode("ascii")) in pinned:  # check_query let only ASCII through
            raise PinnedParameter(
                f"the parameter {name.decode('ascii')!r} is set by the server's route, not by clients"
            )


# A tile pyramid asks for thousands of tiles of the same few groups: the
# template is expanded once per (route, org, repo, ref, group), not per tile.
@functools.lru_cache(maxsize=4096)
def _expand(route: Route, org: str, repo: str, ref: str, group: bytes) -> tuple[bytes, bytes]:
    """The upstream path up to the service path, and the pinned parameters as a query string."""
    values = {"org": org, "repo": repo, "ref": ref, "group": group.decode("ascii")}
    base = "/".join(_fill(segment, values) for segment in route.segments) + "/"
    pinned = "&".join(
        f"{quote(name, safe='')}={quote('/'.join(_fill(part, values) for part in value), safe='')}"
        for name, value in route.query
    )
    return base.encode("ascii"), pinned.encode("ascii")


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
