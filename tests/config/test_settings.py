"""Tests for fluxauth.config.settings: defaults, TOML file, FLUXAUTH_* environment, overrides, errors."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from pathlib import Path

import pytest

from fluxauth.config.settings import DEFAULT_PROTOCOLS, Secret, Settings, load_settings
from fluxauth.errors import ConfigError

CONFIG = """\
store = "sqlite:///from-file.db"
upstream = "http://tiles.internal:8080/"
protocols = ["tiles", "wms", "wcs"]
cors_allow_origins = ["https://maps.example.org", "http://localhost:5173"]
trusted_proxies = ["10.0.0.0/8", "127.0.0.1"]
argon2_profile = "cheapest"
cache_ttl = "5m"
cache_secret = "0123456789abcdef0123"
key_default_lifetime = "90d"
key_max_lifetime = 31536000
rate_limit_failures = 5
upstream_read_timeout = 30
log_level = "debug"

[upstreams]
wms = "http://wms.internal:8081"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fluxauth.toml"
    path.write_text(text)
    return path


def test_load_settings_defaults() -> None:
    """With no file, environment or overrides, the documented safe defaults apply."""
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.store == "sqlite:///fluxauth.db"
    assert settings.upstream == "http://127.0.0.1:8001"
    assert settings.redis_url is None
    assert settings.protocols == DEFAULT_PROTOCOLS == ("dap2", "edr", "wms", "tiles", "zarr")
    assert settings.cors_allow_origins == ()
    assert settings.trusted_proxies == ()
    assert settings.key_default_lifetime == 365 * 86400
    assert settings.key_default_lifetime <= settings.key_max_lifetime
    assert settings.change_poll_interval == 0.5


def test_load_settings_reads_toml_file(tmp_path: Path) -> None:
    """Every kind of value is read from the TOML file and converted."""
    settings = load_settings(write(tmp_path, CONFIG), environ={})
    assert settings.store == "sqlite:///from-file.db"
    assert settings.upstream == "http://tiles.internal:8080"
    assert settings.protocols == ("tiles", "wms", "wcs")
    assert settings.cors_allow_origins == ("https://maps.example.org", "http://localhost:5173")
    assert settings.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32"))
    assert settings.argon2_profile == "cheapest"
    assert settings.cache_ttl == 300
    assert settings.cache_secret == Secret("0123456789abcdef0123")
    assert settings.key_default_lifetime == 90 * 86400
    assert settings.key_max_lifetime == 31_536_000
    assert settings.rate_limit_failures == 5
    assert settings.upstream_read_timeout == 30.0
    assert settings.log_level == "debug"
    assert settings.upstream_for("wms") == "http://wms.internal:8081"
    assert settings.upstream_for("tiles") == "http://tiles.internal:8080"


def test_load_settings_config_file_from_environment(tmp_path: Path) -> None:
    """FLUXAUTH_CONFIG names the file when no file is passed."""
    path = write(tmp_path, 'store = "sqlite:///env-named.db"\n')
    assert load_settings(environ={"FLUXAUTH_CONFIG": str(path)}).store == "sqlite:///env-named.db"


def test_load_settings_environment_overrides_file(tmp_path: Path) -> None:
    """A FLUXAUTH_<KEY> variable wins over the file's value; comma-separated lists are split."""
    environ = {
        "FLUXAUTH_STORE": "sqlite:///from-env.db",
        "FLUXAUTH_REDIS_URL": "redis://127.0.0.1:6379/0",
        "FLUXAUTH_UPSTREAM": "https://upstream.example:9443",
        "FLUXAUTH_CORS_ALLOW_ORIGINS": "https://a.example, https://b.example",
        "FLUXAUTH_TRUSTED_PROXIES": "192.168.0.0/16,::1",
        "FLUXAUTH_RATE_LIMIT_FAILURES": "7",
        "FLUXAUTH_CACHE_TTL": "90",
        "FLUXAUTH_UPSTREAM_READ_TIMEOUT": "2.5",
        "FLUXAUTH_UPSTREAMS": "tiles=http://a.internal:1, wms=http://b.internal:2",
    }
    settings = load_settings(write(tmp_path, CONFIG), environ=environ)
    assert settings.store == "sqlite:///from-env.db"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.upstream == "https://upstream.example:9443"
    assert settings.cors_allow_origins == ("https://a.example", "https://b.example")
    assert settings.trusted_proxies == (ipaddress.ip_network("192.168.0.0/16"), ipaddress.ip_network("::1/128"))
    assert settings.rate_limit_failures == 7
    assert settings.cache_ttl == 90
    assert settings.upstream_read_timeout == 2.5
    assert settings.upstreams == {"tiles": "http://a.internal:1", "wms": "http://b.internal:2"}
    # What the environment does not name still comes from the file.
    assert settings.argon2_profile == "cheapest"


def test_load_settings_public_hosts_normalized() -> None:
    """``public_hosts`` from the environment: lower case, no trailing dot; ``*.`` patterns and IPv6 literals kept."""
    settings = load_settings(environ={"FLUXAUTH_PUBLIC_HOSTS": "Maps.Example.org., *.tiles.example.org,[::1]"})
    assert settings.public_hosts == ("maps.example.org", "*.tiles.example.org", "[::1]")
    assert load_settings(environ={}).public_hosts == ()


def test_load_settings_cors_any_origin_from_environment() -> None:
    """FLUXAUTH_CORS_ALLOW_ORIGINS may be ``*``."""
    assert load_settings(environ={"FLUXAUTH_CORS_ALLOW_ORIGINS": "*"}).cors_allow_origins == ("*",)


def test_load_settings_empty_environment_value_clears_optional(tmp_path: Path) -> None:
    """An empty FLUXAUTH_REDIS_URL turns Redis off even if the file sets it."""
    path = write(tmp_path, 'redis_url = "redis://cache:6379/0"\n')
    assert load_settings(path, environ={"FLUXAUTH_REDIS_URL": ""}).redis_url is None


def test_load_settings_overrides_win_and_none_is_ignored(tmp_path: Path) -> None:
    """Command-line overrides beat file and environment; ``None`` means not given."""
    settings = load_settings(
        write(tmp_path, CONFIG),
        environ={"FLUXAUTH_STORE": "sqlite:///from-env.db", "FLUXAUTH_UPSTREAM": "http://env:1"},
        store="sqlite:///from-cli.db",
        upstream=None,
    )
    assert settings.store == "sqlite:///from-cli.db"
    assert settings.upstream == "http://env:1"


def test_settings_are_frozen() -> None:
    """Settings cannot be changed once built."""
    settings = load_settings(environ={})
    with pytest.raises(AttributeError):
        settings.store = "other"  # type: ignore[misc]


def test_secret_repr_hides_value() -> None:
    """A Secret never shows its value in repr, nor in the Settings that hold it."""
    secret = Secret("0123456789abcdef-very-secret")
    assert "very-secret" not in repr(secret)
    assert "very-secret" not in repr(Settings(cache_secret=secret))
    assert secret.reveal() == "0123456789abcdef-very-secret"


@pytest.mark.parametrize(
    ("origin", "normalized"),
    [
        ("https://maps.example.org/", "https://maps.example.org"),
        ("https://Maps.Example.ORG", "https://maps.example.org"),
        ("http://localhost:5173", "http://localhost:5173"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_load_settings_origin_normalized_as_browsers_send_it(origin: str, normalized: str) -> None:
    """Origins are stored the way a browser's Origin header spells them, so that they match."""
    assert load_settings(environ={}, cors_allow_origins=origin).cors_allow_origins == (normalized,)


@pytest.mark.parametrize(
    ("text", "address"),
    [("127.0.0.1:9100", ("127.0.0.1", 9100)), ("0.0.0.0:9100", ("0.0.0.0", 9100)), ("[::1]:9100", ("::1", 9100))],
)
def test_admin_listen_read(text: str, address: tuple[str, int]) -> None:
    """admin_listen is HOST:PORT with an IP address ([...] for IPv6)."""
    assert load_settings(environ={"FLUXAUTH_ADMIN_LISTEN": text}).admin_listen == address


@pytest.mark.parametrize(
    ("key", "value"),
    [
        # bad URL
        ("upstream", "ftp://tiles.internal"),
        ("upstream", "tiles.internal:8080"),
        ("upstream", "http://"),
        ("upstream", "http://tiles.internal:99999"),
        ("upstream", "http://tiles.internal:port"),
        ("upstream", ""),
        ("upstreams", "tiles"),
        ("upstreams", "tiles=ftp://x"),
        ("upstreams", "wcs=http://a:1"),
        # bad origin
        ("cors_allow_origins", "maps.example.org"),
        ("cors_allow_origins", "ftp://maps.example.org"),
        ("cors_allow_origins", "https://maps.example.org/tiles"),
        ("cors_allow_origins", "https://maps.example.org?x=1"),
        ("cors_allow_origins", "https://maps.example.org#top"),
        ("cors_allow_origins", "https://user@maps.example.org"),
        ("cors_allow_origins", "https://bücher.example"),
        ("cors_allow_origins", "https://"),
        # bad network
        ("trusted_proxies", "10.0.0.0/33"),
        ("trusted_proxies", "proxy.internal"),
        ("trusted_proxies", "10.0.0.1, 300.1.1.1"),
        # bad host names
        ("public_hosts", "https://maps.example.org"),
        ("public_hosts", "maps.example.org:443"),
        ("public_hosts", "maps example.org"),
        ("public_hosts", "*"),
        ("public_hosts", "bücher.example"),
        ("public_hosts", "[::g]"),
        # bad numbers, durations and choices
        ("rate_limit_failures", "0"),
        ("rate_limit_failures", "-5"),
        ("rate_limit_failures", "--5"),
        ("rate_limit_failures", "²"),
        ("rate_limit_failures", "many"),
        ("rate_limit_failures", "1.5"),
        ("verify_threads", "-1"),
        ("cache_ttl", "0"),
        ("cache_ttl", "5 minutes"),
        ("cache_ttl", "-1"),
        ("cache_ttl", "٣h"),
        ("key_max_lifetime", "2y"),
        ("change_poll_interval", "0"),
        ("change_poll_interval", "-1"),
        ("change_poll_interval", "nan"),
        ("change_poll_interval", "inf"),
        ("change_poll_interval", "soon"),
        ("upstream_read_timeout", "Infinity"),
        ("argon2_profile", "fastest"),
        ("log_level", "trace"),
        ("protocols", "Tiles"),
        ("protocols", "tiles,w-m-s"),
        ("protocols", ","),
        ("cache_secret", "too-short"),
        ("store", ""),
        # bad listening address
        ("admin_listen", "9100"),
        ("admin_listen", "localhost:9100"),
        ("admin_listen", "127.0.0.1:0"),
        ("admin_listen", "127.0.0.1:65536"),
        ("admin_listen", "127.0.0.1:port"),
        ("admin_listen", "::1:9100"),
    ],
)
def test_load_settings_bad_environment_value_names_key_and_value(key: str, value: str) -> None:
    """A bad FLUXAUTH_<KEY> value is a ConfigError whose message names the key."""
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={f"FLUXAUTH_{key.upper()}": value})
    assert str(caught.value).startswith(key)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('upstream = "ftp://x"', "upstream"),
        ("cors_allow_origins = [1, 2]", "cors_allow_origins"),
        ('cors_allow_origins = "https://maps.example.org/tiles"', "cors_allow_origins"),
        ('trusted_proxies = ["10.0.0.0/8", "not-a-network"]', "trusted_proxies"),
        ('cache_ttl = "forever"', "cache_ttl"),
        ("cache_ttl = 1.5", "cache_ttl"),
        ("cache_ttl = 0", "cache_ttl"),
        ("rate_limit_failures = true", "rate_limit_failures"),
        ("rate_limit_failures = 2.0", "rate_limit_failures"),
        ("change_poll_interval = true", "change_poll_interval"),
        ("change_poll_interval = inf", "change_poll_interval"),
        ('store = ""', "store"),
        ("store = 3", "store"),
        ('log_level = "INFO"', "log_level"),
        ('upstreams = "http://a:1"', "upstreams"),
        ('[upstreams]\ntiles = "gopher://x"', "upstreams.tiles"),
        ('[upstreams]\nwcs = "http://x:1"', "upstreams.wcs"),
    ],
)
def test_load_settings_bad_file_value_names_key(tmp_path: Path, line: str, key: str) -> None:
    """A bad value in the TOML file is a ConfigError whose message starts with the key."""
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, line + "\n"), environ={})
    assert str(caught.value).startswith(key)


def test_load_settings_bad_value_quotes_it() -> None:
    """The message shows the bad value so that the operator can find it."""
    with pytest.raises(ConfigError, match=re.escape("ftp://tiles.internal")):
        load_settings(environ={"FLUXAUTH_UPSTREAM": "ftp://tiles.internal"})


def test_load_settings_unknown_key_in_file(tmp_path: Path) -> None:
    """A key the file should not have (a typo) is refused by name, not ignored."""
    path = write(tmp_path, 'store = "x.db"\ncache_tll = 60\n')
    with pytest.raises(ConfigError, match="unknown key 'cache_tll'"):
        load_settings(path, environ={})


def test_load_settings_unknown_override() -> None:
    """An override that is not a setting is refused by name."""
    with pytest.raises(ConfigError, match="'stroe'"):
        load_settings(environ={}, stroe="x.db")


def test_load_settings_default_lifetime_beyond_max(tmp_path: Path) -> None:
    """A default key lifetime longer than the maximum is refused, naming the key."""
    path = write(tmp_path, 'key_default_lifetime = "400d"\nkey_max_lifetime = "365d"\n')
    with pytest.raises(ConfigError, match=r"^key_default_lifetime"):
        load_settings(path, environ={})


def test_load_settings_default_lifetime_equal_to_max() -> None:
    """A default lifetime equal to the maximum is allowed."""
    settings = load_settings(environ={"FLUXAUTH_KEY_DEFAULT_LIFETIME": "30d", "FLUXAUTH_KEY_MAX_LIFETIME": "30d"})
    assert settings.key_default_lifetime == settings.key_max_lifetime == 30 * 86400


def test_load_settings_missing_file_names_it(tmp_path: Path) -> None:
    """A config file that cannot be read is a ConfigError naming the file."""
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=re.escape("missing.toml")):
        load_settings(missing, environ={})


def test_load_settings_invalid_toml_names_file(tmp_path: Path) -> None:
    """A file that is not TOML is a ConfigError naming the file."""
    with pytest.raises(ConfigError, match=re.escape("fluxauth.toml")):
        load_settings(write(tmp_path, "store = \n"), environ={})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param({"upstream": "not a url"}, "upstream: expected an http(s) URL", id="upstream"),
        pytest.param({"cache_ttl": -5}, "cache_ttl: expected a whole number >= 1", id="negative-ttl"),
        pytest.param({"protocols": ("tiles", "Bad")}, "protocols: bad protocol name", id="protocol"),
        pytest.param({"trusted_proxies": ("not-an-address",)}, "trusted_proxies", id="proxies"),
        pytest.param({"key_default_lifetime": 10, "key_max_lifetime": 5}, "key_default_lifetime", id="lifetimes"),
        pytest.param({"upstreams": {"nope": "http://a:1"}}, "upstreams.nope", id="upstream-protocol"),
        pytest.param({"cache_secret": Secret("short")}, "cache_secret: use at least 16", id="secret"),
    ],
)
def test_settings_built_in_code_are_checked_like_loaded_ones(overrides: dict[str, object], message: str) -> None:
    """``Settings(...)`` (the middleware's API) refuses what ``load_settings`` refuses, naming the key."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings(**overrides)  # type: ignore[arg-type]


def test_settings_built_in_code_are_normalized_like_loaded_ones() -> None:
    """Values given in code come out in the same form as from the file or the environment."""
    settings = Settings(
        upstream="http://up.internal:8001/",
        trusted_proxies=("10.0.0.0/8",),  # type: ignore[arg-type]
        cors_allow_origins=("https://Maps.Example.org/",),
    )
    assert settings.upstream == "http://up.internal:8001"
    assert settings.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),)
    assert settings.cors_allow_origins == ("https://maps.example.org",)
    assert dataclasses.replace(settings, cache_ttl=60).trusted_proxies == settings.trusted_proxies


def test_settings_replace_is_checked_too() -> None:
    """``dataclasses.replace`` builds a new Settings and checks it."""
    with pytest.raises(ConfigError, match="send_timeout"):
        dataclasses.replace(Settings(), send_timeout=0)
