"""Settings: one frozen object built from a TOML file and ``FLUXAUTH_*`` variables.

Every key of the file can be overridden by the environment variable
``FLUXAUTH_<KEY>`` (upper case); the environment wins. Errors name the key and the
bad value. See ``config/fluxauth.toml`` for every key, annotated.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from fluxauth.config.durations import parse_duration
from fluxauth.config.routes import Route, parse_routes
from fluxauth.errors import ConfigError, InputError
from fluxauth.names import check_host_pattern, check_protocol

Argon2Profile = Literal["rfc9106-low-memory", "rfc9106-high-memory", "cheapest"]
LogLevel = Literal["debug", "info", "warning", "error"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PROTOCOLS = ("dap2", "edr", "wms", "tiles", "zarr")
MAX_GRACE_SECONDS = 7 * 86400  # docs/architecture.md §2: a grace period longer than 7 days is refused.


class Secret:
    """A string that does not show itself in ``repr``, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    """Everything an operator can set. Build it with ``load_settings``."""

    store: str = "sqlite:///fluxauth.db"
    # The longest a store call may take (a connection, a statement, a wait for
    # the write lock) before the request gets 503; and the connections one
    # process keeps to a PostgreSQL store (as many calls run at once).
    store_timeout: float = 5.0
    store_pool_size: int = 4
    redis_url: str | None = None
    upstream: str = "http://127.0.0.1:8001"
    upstreams: Mapping[str, str] = field(default_factory=dict)
    # [[routes]]: stock servers behind fluxauth (fluxauth/config/routes.py).
    routes: tuple[Route, ...] = ()
    # The largest metadata body (JSON, XML, HTML) of a routed response that is
    # rewritten (self-URLs mapped back), decompressed; 502 beyond, never unmapped.
    max_metadata_body: int = 8 * 1024 * 1024
    protocols: tuple[str, ...] = DEFAULT_PROTOCOLS
    cors_allow_origins: tuple[str, ...] = ()
    cors_max_age: int = 600
    trusted_proxies: tuple[Network, ...] = ()
    # The host names clients may use (Host, or a trusted proxy's X-Forwarded-Host),
    # "*.example.org" for every name under it; empty: any valid host (decision/hosts.py).
    public_hosts: tuple[str, ...] = ()
    argon2_profile: Argon2Profile = "rfc9106-low-memory"
    # argon2 verifications at once, off the event loop; 0: as many as the cores
    # hold of the profile's lanes (each verification runs one thread per lane).
    verify_threads: int = 0
    cache_ttl: int = 300
    cache_maxsize: int = 100_000
    cache_secret: Secret | None = None
    # 0.5 s, not the 1 s of docs/architecture.md §4: polling at 1 s cannot promise refusal within 1 s.
    change_poll_interval: float = 0.5
    key_default_lifetime: int = 365 * 86400
    key_max_lifetime: int = 732 * 86400  # two years, leap days included
    rate_limit_failures: int = 20
    rate_limit_window: int = 60
    # A 429 is held this long before it is sent: a client that ignores
    # Retry-After is slowed to one attempt a second per connection (0: off).
    rate_limit_delay: float = 1.0
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 60.0
    upstream_max_connections: int = 256
    # The most of upstream_max_connections one client (address, IPv6 /64) may
    # hold at once: no client can take the pool from the others (SECURITY.md).
    upstream_client_share: float = 0.25
    upstream_max_header_bytes: int = 64 * 1024  # an upstream's status line and headers; 502 beyond
    log_level: LogLevel = "info"
    # Limits on what one client may cost (SECURITY.md). Verifications waiting
    # for the argon2 pool, per process: beyond it, uncached credentials get 503.
    max_pending_verifications: int = 64
    max_header_bytes: int = 64 * 1024  # request line and headers; 431 beyond (fluxauth serve)
    max_url_length: int = 8192  # path and query; 414 beyond (nginx's default line buffer)
    max_request_body: int = 100 * 1024 * 1024  # bytes; 413 beyond; 0 = no limit
    client_header_timeout: float = 10.0  # to send the whole request head (fluxauth serve)
    client_body_timeout: float = 30.0  # the longest pause between two pieces of a request body
    # And the body as a whole must keep up this rate: it may take client_body_timeout
    # plus a second for every this many bytes (Apache's mod_reqtimeout MinRate); 0: off.
    client_body_min_rate: int = 500
    send_timeout: float = 30.0  # the longest a client may leave a piece of the response unread
    # "HOST:PORT": the management API, the page and /_fluxauth/metrics on a listener of their
    # own (the proxy port then answers 404 for them); None: all on the proxy port.
    admin_listen: tuple[str, int] | None = None

    def __post_init__(self) -> None:
        # Built in code (the middleware's public API) or by load_settings: the
        # same checks either way. Each converter accepts its own output, so a
        # value that is already right passes through unchanged.
        for item in dataclasses.fields(self):
            object.__setattr__(self, item.name, _CONVERTERS[item.name](item.name, getattr(self, item.name)))
        if self.key_default_lifetime > self.key_max_lifetime:
            raise ConfigError("key_default_lifetime: must not exceed key_max_lifetime")
        for protocol in self.upstreams:
            if protocol not in self.protocols:
                raise ConfigError(f"upstreams.{protocol}: not one of the enabled protocols")
        # Routes are checked against the protocols, converted above.
        if not all(isinstance(route, Route) for route in self.routes):
            object.__setattr__(self, "routes", parse_routes(list(self.routes), self.protocols, redact_url))
        for route in self.routes:
            if route.protocol not in self.protocols:
                raise ConfigError(f"{route.name}: protocol: not one of the enabled protocols")

    def upstream_for(self, protocol: str) -> str:
        """The upstream base URL for ``protocol``, or the default one."""
        return self.upstreams.get(protocol, self.upstream)

    def __repr__(self) -> str:
        # Settings end up in tracebacks and debug logs: URLs lose their userinfo
        # (passwords of Redis or an upstream), the cache secret shows as Secret('***').
        fields = []
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name in ("store", "redis_url", "upstream") and isinstance(value, str):
                value = redact_url(value)
            elif item.name == "upstreams":
                value = {name: redact_url(url) for name, url in value.items()}
            elif item.name == "routes":
                value = [route.name for route in value]
            fields.append(f"{item.name}={value!r}")
        return f"Settings({', '.join(fields)})"


# scheme://user:password@host -> scheme://***@host, wherever it appears in a text.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")
# ...?password=secret -> ...?password=***: libpq takes the password as a query parameter too.
_PASSWORD_PARAMETER = re.compile(r"(?P<name>[?&]password=)[^&#\s]*", re.IGNORECASE)


def redact_url(text: str) -> str:
    """``text`` with the userinfo and ``password=`` parameters of every URL in it replaced by ``***``.

    Redis, store and upstream URLs may carry a password (``redis://:pw@host``,
    ``postgresql://host/db?password=pw``); log lines, error messages and reprs
    show them through this.
    """
    return _PASSWORD_PARAMETER.sub(r"\g<name>***", _USERINFO.sub(r"\g<scheme>***@", text))


def _text(key: str, raw: object) -> str:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"{key}: expected a non-empty string, got {raw!r}")
    return raw


def _optional_text(key: str, raw: object) -> str | None:
    return None if raw in (None, "") else _text(key, raw)


def _url(key: str, raw: object) -> str:
    text = _text(key, raw).rstrip("/")
    parts = urlsplit(text)
    try:
        port_ok = parts.port is None or parts.port > 0  # .port raises ValueError when out of range
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ConfigError(f"{key}: expected an http(s) URL, got {redact_url(text)!r}")
    return text


def _words(key: str, raw: object) -> tuple[str, ...]:
    """A list from TOML (or a tuple, in code), or a comma-separated string from the environment."""
    if isinstance(raw, str):
        items = [part.strip() for part in raw.split(",")]
    elif isinstance(raw, list | tuple) and all(isinstance(item, str) for item in raw):
        items = [item.strip() for item in raw]
    else:
        raise ConfigError(f"{key}: expected a list of strings or a comma-separated string, got {raw!r}")
    return tuple(item for item in items if item)


def _protocols(key: str, raw: object) -> tuple[str, ...]:
    names = _words(key, raw)
    for name in names:
        try:
            check_protocol(name)
        except InputError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    if not names:
        raise ConfigError(f"{key}: at least one protocol is needed")
    return names


def _origins(key: str, raw: object) -> tuple[str, ...]:
    """Origins as browsers serialize them (RFC 6454 §6.2): ASCII, lower case, no path.

    Browsers send ``Origin`` in that form and it is compared byte for byte, so an
    origin written any other way would silently never match; it is refused
    (or, for case and a trailing ``/``, normalized) here instead.
    """
    origins = _words(key, raw)
    for origin in origins:
        if origin == "*":
            continue
        parts = urlsplit(origin)
        if (
            not origin.isascii()
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or "@" in parts.netloc
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
            or "?" in origin
            or "#" in origin
        ):
            raise ConfigError(f"{key}: expected '*' or origins like https://maps.example.org, got {origin!r}")
    return tuple(origin.rstrip("/").lower() for origin in origins)


def _public_hosts(key: str, raw: object) -> tuple[str, ...]:
    try:
        return tuple(check_host_pattern(item) for item in _words(key, raw))
    except InputError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _networks(key: str, raw: object) -> tuple[Network, ...]:
    if isinstance(raw, list | tuple):  # networks already, in code
        raw = [str(item) if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network) else item for item in raw]
    try:
        return tuple(ipaddress.ip_network(item, strict=False) for item in _words(key, raw))
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from exc


_INTEGER = re.compile(r"-?[0-9]+")


def _int(key: str, raw: object, minimum: int = 0) -> int:
    # A regex, not str.isdigit(): that accepts "²", which int() refuses.
    if isinstance(raw, str) and _INTEGER.fullmatch(raw.strip()):
        raw = int(raw)
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < minimum:
        raise ConfigError(f"{key}: expected a whole number >= {minimum}, got {raw!r}")
    return raw


def _float(key: str, raw: object, *, zero: bool = False) -> float:
    if isinstance(raw, bool):
        raise ConfigError(f"{key}: expected a number, got {raw!r}")
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected a number, got {raw!r}") from None
    # "inf" parses as a float; an infinite poll interval or timeout would never fire.
    if not ((value >= 0 if zero else value > 0) and math.isfinite(value)):
        raise ConfigError(f"{key}: expected a {'number >= 0' if zero else 'positive number'}, got {raw!r}")
    return value


def _positive_float(key: str, raw: object) -> float:
    return _float(key, raw)


def _share(key: str, raw: object) -> float:
    value = _float(key, raw)
    if value > 1:
        raise ConfigError(f"{key}: expected a fraction above 0 and at most 1, got {raw!r}")
    return value


def _seconds(key: str, raw: object) -> int:
    """A duration: a number of seconds, or a string such as ``90d``."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return _int(key, raw, 1)
    try:
        value = parse_duration(_text(key, raw))
    except InputError as exc:
        raise ConfigError(f"{key}: {exc}") from exc
    return _int(key, value, 1)


def _listen(key: str, raw: object) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[::1]:9100`` for IPv6): a listening address, the host an IP address."""
    if isinstance(raw, tuple) and len(raw) == 2:  # its own output
        host, port = raw
        raw = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    text = _optional_text(key, raw)
    if text is None:
        return None
    host, colon, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    try:
        address = ipaddress.ip_address(host)
        number = int(port) if port.isascii() and port.isdigit() else 0
    except ValueError:
        number = 0
    else:
        if (address.version == 6) != bracketed:  # "::1:9100" could be read two ways
            number = 0
    if not colon or not 0 < number < 65536:
        raise ConfigError(f"{key}: expected HOST:PORT with an IP address, e.g. 127.0.0.1:9100, got {text!r}")
    return host, number


def _choice(options: tuple[str, ...]) -> Callable[[str, object], str]:
    def convert(key: str, raw: object) -> str:
        if raw not in options:
            raise ConfigError(f"{key}: expected one of {', '.join(options)}, got {raw!r}")
        return str(raw)

    return convert


def _secret(key: str, raw: object) -> Secret | None:
    text = _optional_text(key, raw.reveal() if isinstance(raw, Secret) else raw)
    if text is not None and len(text) < 16:
        raise ConfigError(f"{key}: use at least 16 characters")
    return None if text is None else Secret(text)


def _upstreams(key: str, raw: object) -> Mapping[str, str]:
    if isinstance(raw, str):  # env: "tiles=http://a:1,wms=http://b:2"
        pairs = [item.partition("=") for item in _words(key, raw)]
        raw = {name.strip(): url.strip() for name, _, url in pairs}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: expected a table of protocol = URL, got {raw!r}")
    return {str(name): _url(f"{key}.{name}", url) for name, url in raw.items()}


def _routes(key: str, raw: object) -> tuple[object, ...]:
    """The routes as read (TOML array of tables, JSON from the environment) or parsed; parsed in ``__post_init__``."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"{key}: expected a JSON array of route tables, got {raw!r}") from exc
    if not isinstance(raw, list | tuple):
        raise ConfigError(f"{key}: expected an array of tables ([[routes]]), got {raw!r}")
    return tuple(raw)


_CONVERTERS: dict[str, Callable[[str, object], Any]] = {
    "store": _text,
    "store_timeout": _positive_float,
    "store_pool_size": lambda k, v: _int(k, v, 1),
    "redis_url": _optional_text,
    "upstream": _url,
    "upstreams": _upstreams,
    "routes": _routes,
    "max_metadata_body": lambda k, v: _int(k, v, 1024),
    "protocols": _protocols,
    "cors_allow_origins": _origins,
    "cors_max_age": lambda k, v: _int(k, v, 0),
    "trusted_proxies": _networks,
    "public_hosts": _public_hosts,
    "argon2_profile": _choice(get_args(Argon2Profile)),
    "verify_threads": lambda k, v: _int(k, v, 0),
    "cache_ttl": _seconds,
    "cache_maxsize": lambda k, v: _int(k, v, 1),
    "cache_secret": _secret,
    "change_poll_interval": _positive_float,
    "key_default_lifetime": _seconds,
    "key_max_lifetime": _seconds,
    "rate_limit_failures": lambda k, v: _int(k, v, 1),
    "rate_limit_window": _seconds,
    "rate_limit_delay": lambda k, v: _float(k, v, zero=True),
    "upstream_connect_timeout": _positive_float,
    "upstream_read_timeout": _positive_float,
    "upstream_max_connections": lambda k, v: _int(k, v, 1),
    "upstream_client_share": _share,
    "upstream_max_header_bytes": lambda k, v: _int(k, v, 1024),
    "log_level": _choice(get_args(LogLevel)),
    "max_pending_verifications": lambda k, v: _int(k, v, 1),
    "max_header_bytes": lambda k, v: _int(k, v, 1024),
    "max_url_length": lambda k, v: _int(k, v, 256),
    "max_request_body": lambda k, v: _int(k, v, 0),
    "client_header_timeout": _positive_float,
    "client_body_timeout": _positive_float,
    "client_body_min_rate": lambda k, v: _int(k, v, 0),
    "send_timeout": _positive_float,
    "admin_listen": _listen,
}
assert set(_CONVERTERS) == {f.name for f in dataclasses.fields(Settings)}


def load_settings(
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: object,
) -> Settings:
    """Read ``config_file`` (or ``$FLUXAUTH_CONFIG``), then the environment, then ``overrides``.

    ``overrides`` are what the command line says (``--store``, ``--upstream``...);
    ``None`` values are ignored.
    """
    env = os.environ if environ is None else environ
    path = config_file or env.get("FLUXAUTH_CONFIG")
    raw: dict[str, object] = {}
    if path:
        try:
            with open(path, "rb") as handle:
                raw.update(tomllib.load(handle))
        except OSError as exc:
            raise ConfigError(f"config file {str(path)!r}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r}: {exc}") from exc
    unknown = sorted(set(raw) - set(_CONVERTERS))
    if unknown:
        raise ConfigError(f"config file {str(path)!r}: unknown key {unknown[0]!r}")
    for key in _CONVERTERS:
        value = env.get(f"FLUXAUTH_{key.upper()}")
        if value is not None:
            raw[key] = value
    unknown = sorted(set(overrides) - set(_CONVERTERS))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}")
    raw.update({key: value for key, value in overrides.items() if value is not None})
    return Settings(**raw)  # type: ignore[arg-type]  # checked and converted by Settings itself
