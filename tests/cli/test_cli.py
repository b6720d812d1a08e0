"""Tests for the ``fluxauth`` command (docs/architecture.md §7), run as real processes.

Each command runs the installed console script in a subprocess, so that exit
statuses, stdout and stderr are exactly what an operator's shell sees. Stores are
prepared in-process (``Admin`` over ``SQLiteStore``) where the set-up is not what
a test is about.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fluxauth.auth.hashing import TokenHasher
from fluxauth.cli.main import main
from fluxauth.config.settings import Settings
from fluxauth.decision.tokens import parse_token
from fluxauth.manage.admin import Admin, add_months, iso
from fluxauth.model import Change, KeyRecord, OrgPolicy
from fluxauth.store.sqlite import SQLiteStore

pytestmark = pytest.mark.servers  # starts servers of its own (tests/conftest.py)

DAY = 86400
TOKEN_LINE = re.compile(r"ema_[0-9a-f]{16}_[A-Za-z0-9_-]{40}\n")
_SCRIPT = shutil.which("fluxauth", path=str(Path(sys.executable).parent))
# The console script that `pip install` made; `python -m fluxauth` if there is none.
FLUXAUTH: list[str] = [_SCRIPT] if _SCRIPT else [sys.executable, "-m", "fluxauth"]


@dataclass(frozen=True)
class Result:
    status: int
    stdout: str
    stderr: str


def base_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any FLUXAUTH_* setting, with the cheapest argon2 profile."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("FLUXAUTH_")}
    env["FLUXAUTH_ARGON2_PROFILE"] = "cheapest"
    env.update(extra)
    return env


def run(args: list[str], cwd: Path, env: Mapping[str, str] | None = None, command: list[str] = FLUXAUTH) -> Result:
    """Run ``fluxauth ARGS`` in ``cwd`` (so that a default store could only land there)."""
    done = subprocess.run(
        [*command, *args],
        cwd=cwd,
        env=dict(env if env is not None else base_env()),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


@dataclass
class World:
    """A store file with org ``acme`` and keys ``ci@acme`` and ``long@acme``, and the directory commands run in."""

    path: Path
    cwd: Path
    ci_token: str
    hasher: TokenHasher = field(default_factory=lambda: TokenHasher("cheapest"))

    def cli(self, *args: str, env: Mapping[str, str] | None = None) -> Result:
        """``fluxauth ARGS --store PATH``."""
        return run([*args, "--store", str(self.path)], self.cwd, env)

    @contextmanager
    def admin(self) -> Iterator[Admin]:
        """An in-process Admin on the store, for set-up that is not what a test is about."""
        store = SQLiteStore(str(self.path))
        try:
            yield Admin(store, Settings(store=str(self.path), argon2_profile="cheapest"))
        finally:
            store.close()

    def key(self, name: str = "ci", org: str = "acme") -> KeyRecord:
        store = SQLiteStore(str(self.path))
        try:
            return store.get_key(org, name)
        finally:
            store.close()

    def policy(self, org: str = "acme") -> OrgPolicy | None:
        store = SQLiteStore(str(self.path))
        try:
            return store.org_policy(org)
        finally:
            store.close()

    def works(self, token: str) -> bool:
        """Whether ``token`` verifies against the hash stored for its token id."""
        parts = parse_token(token)
        assert parts is not None, token
        store = SQLiteStore(str(self.path))
        try:
            credential = store.get_credential(parts.token_id)
        finally:
            store.close()
        return credential is not None and self.hasher.verify(credential.token.hash, parts.secret)


Snapshot = tuple[list[Change], list[KeyRecord], OrgPolicy | None]


def snapshot(path: Path) -> Snapshot:
    """Everything a refused command must leave as it was: the change feed, acme's keys and policy."""
    store = SQLiteStore(str(path))
    try:
        return list(store.changes_since(0)), list(store.list_keys("acme")), store.org_policy("acme")
    finally:
        store.close()


def make_world(directory: Path) -> World:
    """A store in ``directory`` with org acme, keys ``ci`` (read) and ``long`` (700 days), and an empty cwd."""
    path = directory / "store.db"
    cwd = directory / "cwd"
    cwd.mkdir()
    admin = Admin(SQLiteStore(str(path)), Settings(store=str(path), argon2_profile="cheapest"))
    admin.create_org("acme")
    issued = admin.create_key("acme", "ci", permissions=["read"])
    admin.create_key("acme", "long", expires_in=700 * DAY)
    admin.store.close()
    return World(path, cwd, issued.token)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def assert_ok(result: Result) -> None:
    assert result.status == 0, result.stderr
    assert result.stderr == ""


# -- orgs and compute services ----------------------------------------------------------


def test_orgs_create_recorded(world: World) -> None:
    """``orgs create`` records the org and says so."""
    result = world.cli("orgs", "create", "viam-2")
    assert_ok(result)
    assert result.stdout == "created org viam-2\n"
    assert world.policy("viam-2") is not None


def test_compute_enable_public_and_private(world: World) -> None:
    """``compute enable`` turns a protocol on, public only with ``--is-public``."""
    assert_ok(world.cli("compute", "enable", "acme", "tiles", "--is-public"))
    assert_ok(world.cli("compute", "enable", "acme", "wms"))
    policy = world.policy()
    assert policy is not None
    assert {p: (s.enabled, s.is_public) for p, s in policy.services.items()} == {
        "tiles": (True, True),
        "wms": (True, False),
    }


def test_compute_disable_turns_off(world: World) -> None:
    """``compute disable`` turns a protocol off (and not public)."""
    with world.admin() as admin:
        admin.enable_service("acme", "wms", is_public=True)
    result = world.cli("compute", "disable", "acme", "wms")
    assert_ok(result)
    assert result.stdout == "disabled wms for acme\n"
    policy = world.policy()
    assert policy is not None
    assert (policy.services["wms"].enabled, policy.services["wms"].is_public) == (False, False)


def test_compute_list_json(world: World) -> None:
    """``compute list --json`` is a JSON list of protocol, enabled and is_public, by protocol."""
    with world.admin() as admin:
        admin.enable_service("acme", "wms")
        admin.enable_service("acme", "tiles", is_public=True)
        admin.disable_service("acme", "edr")
    result = world.cli("compute", "list", "acme", "--json")
    assert_ok(result)
    assert json.loads(result.stdout) == [
        {"protocol": "edr", "enabled": False, "is_public": False},
        {"protocol": "tiles", "enabled": True, "is_public": True},
        {"protocol": "wms", "enabled": True, "is_public": False},
    ]


def test_compute_list_text(world: World) -> None:
    """``compute list`` prints one line per service: protocol, state, public or private."""
    with world.admin() as admin:
        admin.enable_service("acme", "tiles", is_public=True)
        admin.disable_service("acme", "wms")
    result = world.cli("compute", "list", "acme")
    assert_ok(result)
    assert [line.split() for line in result.stdout.splitlines()] == [
        ["tiles", "enabled", "public"],
        ["wms", "disabled", "private"],
    ]


# -- keys ---------------------------------------------------------------------------------


def test_keys_create_json_all_options(world: World) -> None:
    """``keys create`` with repeated --permission and --repo, --expires-in and --json."""
    result = world.cli(
        "keys",
        "create",
        "acme",
        "bot",
        "--permission",
        "read",
        "--permission",
        "manage_org_users",
        "--repo",
        "era5=read",
        "--repo",
        "gfs=write",
        "--expires-in",
        "90d",
        "--json",
    )
    assert_ok(result)
    issued = json.loads(result.stdout)
    assert {"token", "key", "token_id", "expires_at"} <= set(issued)
    assert issued["key"] == "bot@acme"
    # The API's name, and the one --json printed before the API (scripts read it).
    assert issued["repos"] == issued["repo_grants"] == {"era5": "read", "gfs": "write"}
    assert TOKEN_LINE.fullmatch(issued["token"] + "\n")
    assert issued["token"].startswith(f"ema_{issued['token_id']}_")
    key = world.key("bot")
    assert key.permissions == frozenset({"read", "manage_org_users"})
    assert dict(key.repo_grants) == {"era5": "read", "gfs": "write"}
    assert key.expires_at - key.created_at == 90 * DAY
    assert issued["expires_at"] == iso(key.expires_at)
    assert [t.token_id for t in key.tokens] == [issued["token_id"]]
    assert world.works(issued["token"])


def test_keys_create_prints_token_alone(world: World) -> None:
    """Plain ``keys create`` prints the token alone, one line on stdout; the key lives 365 days."""
    result = world.cli("keys", "create", "acme", "bot")
    assert_ok(result)
    assert TOKEN_LINE.fullmatch(result.stdout)
    token = result.stdout.strip()
    key = world.key("bot")
    assert key.permissions == frozenset()
    assert key.expires_at - key.created_at == 365 * DAY
    assert world.works(token)


def test_keys_list_never_shows_secrets(world: World) -> None:
    """``keys list`` (text and --json) shows keys and token ids, never a secret or an argon2 hash."""
    with world.admin() as admin:
        rotated = admin.rotate_key("acme", "ci")
    secrets = [world.ci_token.split("_", 2)[2], rotated.token.split("_", 2)[2]]
    hashes = [t.hash for t in world.key().tokens]
    text = world.cli("keys", "list", "acme")
    as_json = world.cli("keys", "list", "acme", "--json")
    for result in (text, as_json):
        assert_ok(result)
        assert "$argon2" not in result.stdout
        for secret in [*secrets, *hashes]:
            assert secret not in result.stdout
    listed = {item["key"]: item for item in json.loads(as_json.stdout)}
    assert sorted(listed) == ["ci@acme", "long@acme"]
    assert listed["ci@acme"]["permissions"] == ["read"]
    assert listed["ci@acme"]["repos"] == listed["ci@acme"]["repo_grants"] == {}
    assert [t["token_id"] for t in listed["ci@acme"]["tokens"]] == [t.token_id for t in world.key().tokens]
    assert "ci@acme" in text.stdout
    assert "tokens=2" in text.stdout


def test_keys_rotate_grace_and_extension(world: World) -> None:
    """``keys rotate --grace 2h --extend-months 3`` prints the new token alone and records both."""
    before = world.key()
    result = world.cli("keys", "rotate", "acme", "ci", "--grace", "2h", "--extend-months", "3")
    assert result.status == 0, result.stderr
    assert TOKEN_LINE.fullmatch(result.stdout)
    assert "2h" in result.stderr
    token = result.stdout.strip()
    after = world.key()
    old, new = after.tokens
    assert old.token_id == before.tokens[0].token_id
    assert old.not_after == new.created_at + 2 * 3600
    assert new.not_after is None
    assert after.expires_at == add_months(before.expires_at, 3)
    assert world.works(token)
    assert world.works(world.ci_token)


def test_keys_rotate_json(world: World) -> None:
    """``keys rotate --json`` prints one JSON object; without --grace the old token lasts one day."""
    result = world.cli("keys", "rotate", "acme", "ci", "--json")
    assert_ok(result)
    issued = json.loads(result.stdout)
    assert {"token", "key", "token_id", "expires_at"} <= set(issued)
    assert issued["key"] == "ci@acme"
    old, new = world.key().tokens
    assert issued["token_id"] == new.token_id
    assert old.not_after == new.created_at + DAY
    assert world.works(issued["token"])


def test_keys_delete_revokes(world: World) -> None:
    """``keys delete`` removes the key and every token of it."""
    assert world.works(world.ci_token)
    result = world.cli("keys", "delete", "acme", "ci")
    assert_ok(result)
    assert "ci@acme" in result.stdout
    assert not world.works(world.ci_token)
    assert [k.name for k in snapshot(world.path)[1]] == ["long"]


def test_keys_revoke_token_ends_grace_now(world: World) -> None:
    """``keys revoke-token`` ends a rotated-out token's grace at once; the new token goes on working."""
    with world.admin() as admin:
        rotated = admin.rotate_key("acme", "ci", grace=7 * DAY)
    old = world.key().tokens[0].token_id
    assert world.works(world.ci_token)
    result = world.cli("keys", "revoke-token", "acme", "ci", old)
    assert_ok(result)
    assert old in result.stdout
    token = next(t for t in world.key().tokens if t.token_id == old)
    assert token.not_after is not None
    assert token.not_after <= world.key().tokens[1].created_at + 60  # now, not in 7 days
    assert world.works(rotated.token)
    listed = world.cli("keys", "list", "acme")
    assert f"{old}(until " in listed.stdout


def test_audit_lists_events_text_and_json(world: World) -> None:
    """``audit ORG`` shows every mutation, newest first, by ``cli``; ``--json`` the API's events; filters apply."""
    assert world.cli("keys", "rotate", "acme", "ci", "--grace", "2h").status == 0
    assert_ok(world.cli("keys", "delete", "acme", "long"))
    text = world.cli("audit", "acme")
    assert_ok(text)
    lines = text.stdout.splitlines()
    assert "keys.delete long@acme" in lines[0]
    assert "keys.rotate ci@acme" in lines[1]
    assert "grace 2h" in lines[1]
    as_json = world.cli("audit", "acme", "--json")
    assert_ok(as_json)
    events = json.loads(as_json.stdout)
    assert [e["action"] for e in events] == ["keys.delete", "keys.rotate", "keys.create", "keys.create", "orgs.create"]
    assert {e["actor"] for e in events} == {"cli"}
    assert set(events[0]) == {"seq", "at", "actor", "client", "action", "target", "outcome", "detail"}
    assert world.ci_token.split("_", 2)[2] not in as_json.stdout
    paged = json.loads(world.cli("audit", "acme", "--json", "--limit", "2", "--before", str(events[0]["seq"])).stdout)
    assert [e["seq"] for e in paged] == [events[1]["seq"], events[2]["seq"]]
    assert json.loads(world.cli("audit", "acme", "--json", "--actor", "someone@acme").stdout) == []
    assert json.loads(world.cli("audit", "acme", "--json", "--since", "2999-01-01").stdout) == []
    assert len(json.loads(world.cli("audit", "acme", "--json", "--until", "2999-01-01T00:00:00Z").stdout)) == 5


def test_repos_visibility_set(world: World) -> None:
    """``repos visibility ORG/REPO V`` records the repo's visibility."""
    result = world.cli("repos", "visibility", "acme/era5", "authenticated")
    assert_ok(result)
    assert result.stdout == "acme/era5 is authenticated\n"
    policy = world.policy()
    assert policy is not None
    assert dict(policy.repos) == {"era5": "authenticated"}


@pytest.mark.parametrize("visibility", ["public", "private"])
def test_repos_visibility_each_value(
    world: World, visibility: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every visibility is accepted, and a later one replaces an earlier one (in-process: not about the process)."""
    for name in [name for name in os.environ if name.startswith("FLUXAUTH_")]:
        monkeypatch.delenv(name)
    with world.admin() as admin:
        admin.set_visibility("acme", "era5", "authenticated")
    assert main(["repos", "visibility", "acme/era5", visibility, "--store", str(world.path)]) == 0
    assert capsys.readouterr().out == f"acme/era5 is {visibility}\n"
    policy = world.policy()
    assert policy is not None
    assert dict(policy.repos) == {"era5": visibility}


def test_python_m_fluxauth_same_command(world: World) -> None:
    """``python -m fluxauth`` is the same command as the console script."""
    result = run(
        ["orgs", "create", "viam", "--store", str(world.path)], world.cwd, command=[sys.executable, "-m", "fluxauth"]
    )
    assert_ok(result)
    assert world.policy("viam") is not None


# -- where the settings come from ------------------------------------------------------------


def test_store_from_env_when_no_option(world: World) -> None:
    """Without --store the store is $FLUXAUTH_STORE."""
    result = run(["orgs", "create", "viam"], world.cwd, base_env(FLUXAUTH_STORE=str(world.path)))
    assert_ok(result)
    assert world.policy("viam") is not None
    assert list(world.cwd.iterdir()) == []


def test_store_option_beats_env(world: World, tmp_path: Path) -> None:
    """--store wins over $FLUXAUTH_STORE."""
    elsewhere = tmp_path / "elsewhere.db"
    result = world.cli("orgs", "create", "viam", env=base_env(FLUXAUTH_STORE=str(elsewhere)))
    assert_ok(result)
    assert world.policy("viam") is not None
    assert not elsewhere.exists()


def test_config_file_read(world: World, tmp_path: Path) -> None:
    """Values in --config FILE apply: here the store and the protocols."""
    config = tmp_path / "fluxauth.toml"
    config.write_text(f'store = "{world.path}"\nprotocols = ["tiles"]\n')
    result = run(["compute", "enable", "acme", "wms", "--config", str(config)], world.cwd)
    assert result.status == 2
    assert result.stderr == "fluxauth: error: unknown protocol 'wms': expected one of tiles\n"
    assert_ok(run(["compute", "enable", "acme", "tiles", "--config", str(config)], world.cwd))
    policy = world.policy()
    assert policy is not None
    assert list(policy.services) == ["tiles"]


def test_config_file_overridden_by_env(world: World, tmp_path: Path) -> None:
    """$FLUXAUTH_* wins over the same key in the --config file."""
    config = tmp_path / "fluxauth.toml"
    config.write_text(f'store = "{tmp_path / "from-file.db"}"\nprotocols = ["tiles"]\n')
    env = base_env(FLUXAUTH_STORE=str(world.path), FLUXAUTH_PROTOCOLS="wms,edr")
    result = run(["compute", "enable", "acme", "wms", "--config", str(config)], world.cwd, env)
    assert_ok(result)
    policy = world.policy()
    assert policy is not None
    assert list(policy.services) == ["wms"]
    assert not (tmp_path / "from-file.db").exists()


# -- bad input -------------------------------------------------------------------------------

BAD_CONFIG = 'colour = "blue"\n'


@dataclass(frozen=True)
class Bad:
    """A command that must be refused: exit 2, one ``fluxauth: error:`` line naming ``names``."""

    args: list[str]
    names: str
    store_option: bool = True  # append --store PATH (impossible where the command itself is missing)
    env: dict[str, str] = field(default_factory=dict)  # "{store}" and "{config}" are filled in


BAD_INPUT: dict[str, Bad] = {
    "unknown-org-keys-create": Bad(["keys", "create", "nope", "bot"], "no org named 'nope'"),
    "unknown-org-compute-enable": Bad(["compute", "enable", "nope", "tiles"], "no org named 'nope'"),
    "unknown-org-visibility": Bad(["repos", "visibility", "nope/era5", "public"], "no org named 'nope'"),
    "org-exists": Bad(["orgs", "create", "acme"], "'acme' exists already"),
    "bad-org-name": Bad(["orgs", "create", "Acme"], "bad org name 'Acme'"),
    "bad-key-name": Bad(["keys", "create", "acme", "Bot"], "bad key name 'Bot'"),
    "key-exists": Bad(["keys", "create", "acme", "ci"], "'ci@acme' exists already"),
    "unknown-key-rotate": Bad(["keys", "rotate", "acme", "ghost"], "no key named ghost@acme"),
    "unknown-key-delete": Bad(["keys", "delete", "acme", "ghost"], "no key named ghost@acme"),
    "bad-duration": Bad(["keys", "create", "acme", "bot", "--expires-in", "5x"], "bad duration '5x'"),
    "non-ascii-duration": Bad(["keys", "create", "acme", "bot", "--expires-in", "²"], "bad duration '²'"),
    "expires-beyond-max": Bad(["keys", "create", "acme", "bot", "--expires-in", "1000d"], "bad expiry"),
    "grace-over-7d": Bad(["keys", "rotate", "acme", "ci", "--grace", "8d"], "bad grace period: at most 7 days"),
    "bad-grace": Bad(["keys", "rotate", "acme", "ci", "--grace", "soon"], "bad duration 'soon'"),
    "unknown-protocol-enable": Bad(["compute", "enable", "acme", "ftp"], "unknown protocol 'ftp'"),
    "repo-without-org": Bad(["repos", "visibility", "acme", "public"], "bad repository 'acme': expected ORG/REPO"),
    "repo-dot-dot": Bad(["repos", "visibility", "acme/..", "public"], "bad repo name '..'"),
    "repo-upper-case-org": Bad(["repos", "visibility", "ACME/x", "public"], "bad org name 'ACME'"),
    "repo-nested": Bad(["repos", "visibility", "acme/a/b", "public"], "bad repo name 'a/b'"),
    "bad-visibility": Bad(["repos", "visibility", "acme/era5", "secret"], "invalid choice: 'secret'"),
    "bad-permission": Bad(["keys", "create", "acme", "bot", "--permission", "admin"], "invalid choice: 'admin'"),
    "repo-spec-no-access": Bad(["keys", "create", "acme", "bot", "--repo", "era5"], "bad --repo 'era5'"),
    "repo-spec-bad-access": Bad(["keys", "create", "acme", "bot", "--repo", "era5=admin"], "bad --repo 'era5=admin'"),
    "repo-spec-bad-name": Bad(["keys", "create", "acme", "bot", "--repo", "../x=read"], "bad repo name '../x'"),
    "extend-months-13": Bad(["keys", "rotate", "acme", "ci", "--extend-months", "13"], "--extend-months '13'"),
    "extend-months-0": Bad(["keys", "rotate", "acme", "ci", "--extend-months", "0"], "--extend-months '0'"),
    "extend-past-max": Bad(["keys", "rotate", "acme", "long", "--extend-months", "2"], "maximum lifetime"),
    "revoke-current-token": Bad(["keys", "revoke-token", "acme", "ci", "{ci_token_id}"], "is the current token"),
    "revoke-unknown-token": Bad(["keys", "revoke-token", "acme", "ci", "0123456789abcdef"], "no token 0123456789ab"),
    "revoke-unknown-key": Bad(["keys", "revoke-token", "acme", "ghost", "0123456789abcdef"], "no key named ghost@acme"),
    "audit-unknown-org": Bad(["audit", "nope"], "no org named 'nope'"),
    "audit-bad-since": Bad(["audit", "acme", "--since", "yesterday"], "bad time 'yesterday'"),
    "audit-bad-limit": Bad(["audit", "acme", "--limit", "0"], "bad number '0'"),
    "audit-limit-too-large": Bad(["audit", "acme", "--limit", "5000"], "bad limit 5000"),
    "missing-command": Bad([], "required: COMMAND", store_option=False),
    "missing-action": Bad(["keys"], "required: action", store_option=False),
    "missing-org": Bad(["orgs", "create"], "required: org"),
    "missing-name": Bad(["keys", "create", "acme"], "required: name"),
    "unknown-option": Bad(["keys", "list", "acme", "--bogus"], "unrecognized arguments: --bogus"),
    "unknown-config-key": Bad(["orgs", "create", "viam", "--config", "{config}"], "unknown key 'colour'"),
    "unknown-config-key-env": Bad(
        ["orgs", "create", "viam"], "unknown key 'colour'", env={"FLUXAUTH_CONFIG": "{config}"}
    ),
    "missing-config-file": Bad(["orgs", "create", "viam", "--config", "{config}.missing"], "No such file"),
    "bad-env-value": Bad(["orgs", "create", "viam"], "argon2_profile", env={"FLUXAUTH_ARGON2_PROFILE": "fast"}),
    "env-store": Bad(
        ["orgs", "create", "acme"], "'acme' exists already", store_option=False, env={"FLUXAUTH_STORE": "{store}"}
    ),
}


@dataclass(frozen=True)
class Refusal:
    """What one bad command did: its result, the store before and after, what appeared in its cwd."""

    result: Result
    before: Snapshot
    after: Snapshot
    cwd_after: list[Path]


def refuse(directory: Path, case: Bad) -> Refusal:
    """Run one bad command against a world of its own."""
    world = make_world(directory)
    config = directory / "bad.toml"
    config.write_text(BAD_CONFIG)

    ci_token_id = world.ci_token.split("_")[1]

    def fill(text: str) -> str:
        return (
            text.replace("{config}", str(config))
            .replace("{store}", str(world.path))
            .replace("{ci_token_id}", ci_token_id)
        )

    args = [fill(arg) for arg in case.args] + (["--store", str(world.path)] if case.store_option else [])
    env = base_env(**{name: fill(value) for name, value in case.env.items()})
    before = snapshot(world.path)
    result = run(args, world.cwd, env)
    return Refusal(result, before, snapshot(world.path), list(world.cwd.iterdir()))


@pytest.fixture(scope="module")
def refusals(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Refusal]:
    """The selected bad-input cases, each a real process against a store of its own, run side by side.

    Each process spends ~0.5 s starting up; running the cases concurrently keeps
    the file fast on a machine with several cores without giving up the process boundary.
    """
    selected = [
        item.callspec.id
        for item in request.session.items
        if isinstance(item, pytest.Function) and item.originalname == "test_bad_input_refused"
    ]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        futures = {
            name: pool.submit(refuse, tmp_path_factory.mktemp(name), BAD_INPUT[name])
            for name in selected
            if name in BAD_INPUT
        }
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", BAD_INPUT)
def test_bad_input_refused(refusals: dict[str, Refusal], name: str) -> None:
    """Bad input: exit status 2, one ``fluxauth: error:`` line naming it, empty stdout, store unchanged."""
    refusal = refusals[name]
    result = refusal.result
    assert (result.status, result.stdout) == (2, ""), result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fluxauth: error: ")
    assert BAD_INPUT[name].names in lines[0]
    assert refusal.after == refusal.before
    assert refusal.cwd_after == []  # no default store was made instead
