"""Tests for ``Admin``: the operator's actions, checked before the store is touched."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fluxauth.auth.hashing import TokenHasher
from fluxauth.clock import FakeClock
from fluxauth.config.settings import MAX_GRACE_SECONDS, Settings
from fluxauth.decision.tokens import parse_token
from fluxauth.errors import Conflict, InputError, NotFound
from fluxauth.manage.admin import DEFAULT_GRACE_SECONDS, Admin, add_months, iso
from fluxauth.model import Change, KeyRecord
from fluxauth.store.sqlite import SQLiteStore

DAY = 86400
MAX_LIFETIME = Settings().key_max_lifetime

TOKEN_SHAPE = r"ema_[0-9a-f]{16}_[A-Za-z0-9_-]{40}"


def at(text: str) -> float:
    """The timestamp of an ISO 8601 UTC time such as ``2027-01-31T12:00:00``."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(at("2027-01-15T08:00:00"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(store=str(tmp_path / "admin.db"), argon2_profile="cheapest")


@pytest.fixture
def store(settings: Settings) -> Iterator[SQLiteStore]:
    store = SQLiteStore(settings.store)
    yield store
    store.close()


@pytest.fixture
def admin(store: SQLiteStore, settings: Settings, clock: FakeClock) -> Admin:
    """An Admin over a store holding org ``acme``."""
    admin = Admin(store, settings, clock)
    admin.create_org("acme")
    return admin


@pytest.fixture
def hasher() -> TokenHasher:
    return TokenHasher("cheapest")


def state(store: SQLiteStore) -> tuple[list[Change], list[KeyRecord]]:
    """What a refused action must leave untouched: the change feed and acme's keys with their tokens."""
    return list(store.changes_since(0)), list(store.list_keys("acme"))


def works(store: SQLiteStore, hasher: TokenHasher, token: str) -> bool:
    """Whether ``token`` verifies against the hash the store holds for its token id."""
    parts = parse_token(token)
    assert parts is not None, token
    credential = store.get_credential(parts.token_id)
    return credential is not None and hasher.verify(credential.token.hash, parts.secret)


# -- orgs and services -------------------------------------------------------------


def test_create_org_recorded(admin: Admin, store: SQLiteStore) -> None:
    """A new org exists and is announced in the change feed."""
    admin.create_org("other-2")
    assert store.org_exists("other-2")
    assert store.changes_since(0)[-1].org == "other-2"


@pytest.mark.parametrize("org", ["Acme", "", "-acme", "ac me", "acme/x", "a" * 64, "acme\n"])
def test_create_org_bad_name_refused(admin: Admin, store: SQLiteStore, org: str) -> None:
    """Org names are lower-case slugs; anything else is refused before the store."""
    before = state(store)
    with pytest.raises(InputError, match="bad org name"):
        admin.create_org(org)
    assert state(store) == before


def test_create_org_twice_conflict(admin: Admin) -> None:
    """An org that exists cannot be created again."""
    with pytest.raises(Conflict):
        admin.create_org("acme")


def test_services_enable_disable_list(admin: Admin) -> None:
    """Enabled services list with their public flag; a disabled one stays listed as disabled."""
    admin.enable_service("acme", "tiles", is_public=True)
    admin.enable_service("acme", "wms")
    admin.enable_service("acme", "edr")
    admin.disable_service("acme", "edr")
    listed = [(s.protocol, s.enabled, s.is_public) for s in admin.list_services("acme")]
    assert listed == [("edr", False, False), ("tiles", True, True), ("wms", True, False)]


def test_services_disable_clears_public(admin: Admin) -> None:
    """Disabling a public service also drops its public flag, so re-enabling does not reopen it."""
    admin.enable_service("acme", "tiles", is_public=True)
    admin.disable_service("acme", "tiles")
    admin.enable_service("acme", "tiles")
    [service] = admin.list_services("acme")
    assert (service.enabled, service.is_public) == (True, False)


@pytest.mark.parametrize("protocol", ["ftp", "TILES", "", "tiles/x"])
@pytest.mark.parametrize("action", ["enable", "disable"])
def test_services_unknown_protocol_refused(admin: Admin, store: SQLiteStore, action: str, protocol: str) -> None:
    """Only configured protocols can be enabled or disabled."""
    change = admin.enable_service if action == "enable" else admin.disable_service
    before = state(store)
    with pytest.raises(InputError, match="unknown protocol"):
        change("acme", protocol)
    assert state(store) == before


def test_services_protocols_from_settings(store: SQLiteStore, clock: FakeClock, settings: Settings) -> None:
    """The protocols an org may enable are those of the settings, not a fixed list."""
    admin = Admin(store, Settings(store=settings.store, protocols=("tiles", "cog")), clock)
    admin.create_org("acme")
    admin.enable_service("acme", "cog")
    with pytest.raises(InputError, match="expected one of tiles, cog"):
        admin.enable_service("acme", "wms")


def test_services_unknown_org_not_found(admin: Admin) -> None:
    """Services of an org that does not exist: NotFound (an InputError, exit status 2)."""
    with pytest.raises(NotFound):
        admin.enable_service("nope", "tiles")
    with pytest.raises(NotFound):
        admin.list_services("nope")


@pytest.mark.parametrize("visibility", ["private", "authenticated", "public"])
def test_set_visibility_accepted(admin: Admin, store: SQLiteStore, visibility: str) -> None:
    """Each of the three visibilities is recorded for the repo."""
    admin.set_visibility("acme", "era5.v2_final-1", visibility)
    policy = store.org_policy("acme")
    assert policy is not None
    assert policy.visibility("era5.v2_final-1") == visibility


@pytest.mark.parametrize(
    ("org", "repo", "visibility", "match"),
    [
        ("acme", "era5", "secret", "bad visibility 'secret'"),
        ("acme", "era5", "Public", "bad visibility"),
        ("acme", "..", "public", "bad repo name"),
        ("acme", "a..b", "public", "bad repo name"),
        ("acme", ".hidden", "public", "bad repo name"),
        ("acme", "a/b", "public", "bad repo name"),
        ("acme", "", "public", "bad repo name"),
        ("acme", "x" * 101, "public", "bad repo name"),
        ("ACME", "era5", "public", "bad org name"),
        ("nope", "era5", "public", "no org named 'nope'"),
    ],
)
def test_set_visibility_bad_input_refused(
    admin: Admin, store: SQLiteStore, org: str, repo: str, visibility: str, match: str
) -> None:
    """A bad visibility, repo or org is refused and nothing is recorded."""
    before = state(store)
    with pytest.raises(InputError, match=match):
        admin.set_visibility(org, repo, visibility)
    assert state(store) == before


# -- creating keys -------------------------------------------------------------------


def test_create_key_defaults(admin: Admin, store: SQLiteStore, clock: FakeClock, hasher: TokenHasher) -> None:
    """A key without options: no permissions, expiry in 365 days, one working token."""
    issued = admin.create_key("acme", "ci")
    assert issued.key.principal == "ci@acme"
    assert issued.key.permissions == frozenset()
    assert dict(issued.key.repo_grants) == {}
    assert issued.key.created_at == clock()
    assert issued.key.expires_at == clock() + 365 * DAY
    assert issued.token.startswith(f"ema_{issued.token_id}_")
    stored = store.get_key("acme", "ci")
    assert stored.expires_at == clock() + 365 * DAY
    [token] = stored.tokens
    assert token.token_id == issued.token_id
    assert token.hash.startswith("$argon2id$")
    assert issued.token.split("_", 2)[2] not in token.hash
    assert works(store, hasher, issued.token)


def test_create_key_token_shape(admin: Admin) -> None:
    """Tokens read ``ema_<16 hex>_<40 url-safe>``, and two keys never share an id or secret."""
    first = admin.create_key("acme", "one").token
    second = admin.create_key("acme", "two").token
    assert first != second
    for token in (first, second):
        assert parse_token(token) is not None
        assert re.fullmatch(TOKEN_SHAPE, token)


def test_create_key_permissions_and_grants(admin: Admin, store: SQLiteStore) -> None:
    """Permissions and repo grants are recorded as given."""
    admin.create_key(
        "acme", "ci", permissions=["read", "manage_org_users"], repo_grants={"era5": "write", "gfs": "read"}
    )
    key = store.get_key("acme", "ci")
    assert key.permissions == frozenset({"read", "manage_org_users"})
    assert dict(key.repo_grants) == {"era5": "write", "gfs": "read"}


def test_create_key_permissions_from_generator(admin: Admin, store: SQLiteStore) -> None:
    """Permissions given as a one-shot iterable are all kept (they were once read twice)."""
    admin.create_key("acme", "ci", permissions=(p for p in ["read", "write"]))
    assert store.get_key("acme", "ci").permissions == frozenset({"read", "write"})


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [(90 * DAY, 90 * DAY), (1, 1), (MAX_LIFETIME, MAX_LIFETIME)],
)
def test_create_key_expires_in_accepted(
    admin: Admin, store: SQLiteStore, clock: FakeClock, expires_in: int, lifetime: int
) -> None:
    """Any lifetime from 1 second up to the configured maximum is accepted."""
    admin.create_key("acme", "ci", expires_in=expires_in)
    assert store.get_key("acme", "ci").expires_at == clock() + lifetime


@pytest.mark.parametrize("expires_in", [MAX_LIFETIME + 1, 10_000 * DAY, 0, -1])
def test_create_key_expires_in_refused(admin: Admin, store: SQLiteStore, expires_in: int) -> None:
    """A lifetime beyond key_max_lifetime (or not positive) is refused; nothing is created."""
    before = state(store)
    with pytest.raises(InputError, match="bad expiry"):
        admin.create_key("acme", "ci", expires_in=expires_in)
    assert state(store) == before


def test_create_key_max_lifetime_from_settings(store: SQLiteStore, clock: FakeClock, settings: Settings) -> None:
    """The maximum comes from the settings."""
    admin = Admin(
        store,
        Settings(store=settings.store, argon2_profile="cheapest", key_default_lifetime=DAY, key_max_lifetime=30 * DAY),
        clock,
    )
    admin.create_org("acme")
    assert admin.create_key("acme", "ci").key.expires_at == clock() + DAY
    with pytest.raises(InputError, match="30 days"):
        admin.create_key("acme", "cd", expires_in=30 * DAY + 1)


CreateArgs = dict[str, object]

BAD_KEYS: list[tuple[str, str, CreateArgs, str]] = [
    ("Acme", "ci", {}, "bad org name 'Acme'"),
    ("acme", "CI", {}, "bad key name 'CI'"),
    ("acme", "", {}, "bad key name"),
    ("acme", "a..b", {}, "bad key name"),
    ("acme", "ci@acme", {}, "bad key name"),
    ("acme", "-ci", {}, "bad key name"),
    ("acme", "k" * 65, {}, "bad key name"),
    ("acme", "ci", {"permissions": ["admin"]}, "bad permission 'admin'"),
    ("acme", "ci", {"permissions": ["read", "Read"]}, "bad permission 'Read'"),
    ("acme", "ci", {"repo_grants": {"era5": "admin"}}, "bad access 'admin' for repo 'era5'"),
    ("acme", "ci", {"repo_grants": {"era5": "manage_org_users"}}, "bad access"),
    ("acme", "ci", {"repo_grants": {"../x": "read"}}, "bad repo name"),
    ("acme", "ci", {"repo_grants": {"acme/era5": "read"}}, "bad repo name"),
    ("acme", "ci", {"repo_grants": {"": "read"}}, "bad repo name"),
    ("nope", "ci", {}, "no org named 'nope'"),
]


@pytest.mark.parametrize(("org", "name", "options", "match"), BAD_KEYS)
def test_create_key_bad_input_refused(
    admin: Admin, store: SQLiteStore, org: str, name: str, options: CreateArgs, match: str
) -> None:
    """A bad org, key name, permission or grant is an InputError naming it; the store is unchanged."""
    before = state(store)
    with pytest.raises(InputError, match=match):
        admin.create_key(org, name, **options)  # type: ignore[arg-type]
    assert state(store) == before


def test_create_key_duplicate_conflict(admin: Admin, store: SQLiteStore) -> None:
    """A key name is used once per org; the second create changes nothing."""
    admin.create_key("acme", "ci")
    before = state(store)
    with pytest.raises(Conflict, match="ci@acme"):
        admin.create_key("acme", "ci", permissions=["write"])
    assert state(store) == before


# -- rotating keys ---------------------------------------------------------------------


def test_rotate_returns_working_token(admin: Admin, store: SQLiteStore, hasher: TokenHasher) -> None:
    """The rotated-in token verifies against its stored hash; the old one keeps its own."""
    old = admin.create_key("acme", "ci", permissions=["read"])
    new = admin.rotate_key("acme", "ci")
    assert new.token != old.token
    assert new.token_id != old.token_id
    assert parse_token(new.token) is not None
    assert works(store, hasher, new.token)
    assert works(store, hasher, old.token)
    # Secrets are not interchangeable between the two tokens.
    new_parts, old_parts = parse_token(new.token), parse_token(old.token)
    assert new_parts is not None
    assert old_parts is not None
    assert not works(store, hasher, f"ema_{new_parts.token_id}_{old_parts.secret}")
    assert [t.token_id for t in new.key.tokens] == [old.token_id, new.token_id]
    assert new.key.permissions == frozenset({"read"})


@pytest.mark.parametrize("grace", [0, 1, 2 * 3600, DEFAULT_GRACE_SECONDS, 7 * DAY])
def test_rotate_grace_accepted(admin: Admin, store: SQLiteStore, clock: FakeClock, grace: int) -> None:
    """Grace periods from 0 s to 7 days end the old token that long after the rotation."""
    old = admin.create_key("acme", "ci")
    clock.advance(100)
    new = admin.rotate_key("acme", "ci", grace=grace)
    ends = {t.token_id: t.not_after for t in store.get_key("acme", "ci").tokens}
    assert ends == {old.token_id: clock() + grace, new.token_id: None}


def test_rotate_default_grace_one_day(admin: Admin, store: SQLiteStore, clock: FakeClock) -> None:
    """Without a grace period the old token stays valid for one day."""
    old = admin.create_key("acme", "ci")
    admin.rotate_key("acme", "ci")
    credential = store.get_credential(old.token_id)
    assert credential is not None
    assert credential.token.not_after == clock() + DAY


@pytest.mark.parametrize("grace", [7 * DAY + 1, 8 * DAY, -1])
def test_rotate_grace_refused(admin: Admin, store: SQLiteStore, grace: int) -> None:
    """A grace period over 7 days (or negative) is refused and no token is added."""
    assert MAX_GRACE_SECONDS == 7 * DAY
    admin.create_key("acme", "ci")
    before = state(store)
    with pytest.raises(InputError, match="grace"):
        admin.rotate_key("acme", "ci", grace=grace)
    assert state(store) == before


def test_rotate_without_extension_keeps_expiry(admin: Admin, clock: FakeClock) -> None:
    """Rotation alone does not move the key's expiry."""
    created = admin.create_key("acme", "ci", expires_in=30 * DAY)
    clock.advance(DAY)
    assert admin.rotate_key("acme", "ci").key.expires_at == created.key.expires_at


@pytest.mark.parametrize("months", range(1, 13))
def test_rotate_extend_months_accepted(admin: Admin, clock: FakeClock, months: int) -> None:
    """1 to 12 months are added in calendar months to the current expiry."""
    created = admin.create_key("acme", "ci", expires_in=30 * DAY)
    issued = admin.rotate_key("acme", "ci", extend_months=months)
    assert issued.key.expires_at == add_months(created.key.expires_at, months)


@pytest.mark.parametrize(
    ("expires", "months", "extended"),
    [
        ("2027-01-31T00:00:00", 1, "2027-02-28T00:00:00"),
        ("2028-01-31T00:00:00", 1, "2028-02-29T00:00:00"),
        ("2027-03-31T10:30:00", 1, "2027-04-30T10:30:00"),
        ("2027-08-31T00:00:00", 6, "2028-02-29T00:00:00"),
        ("2027-12-15T00:00:00", 1, "2028-01-15T00:00:00"),
    ],
)
def test_rotate_extend_calendar_months(
    admin: Admin, clock: FakeClock, expires: str, months: int, extended: str
) -> None:
    """Extension clamps to the end of a shorter month (Jan 31 + 1 month is the end of February)."""
    clock.now = at("2027-01-01T00:00:00")
    admin.create_key("acme", "ci", expires_in=int(at(expires) - clock()))
    assert admin.rotate_key("acme", "ci", extend_months=months).key.expires_at == at(extended)


def test_rotate_extend_expired_key_counts_from_now(admin: Admin, clock: FakeClock) -> None:
    """An expired key is extended from now, not from its past expiry."""
    admin.create_key("acme", "ci", expires_in=DAY)
    clock.advance(40 * DAY)
    assert admin.rotate_key("acme", "ci", extend_months=2).key.expires_at == add_months(clock(), 2)


@pytest.mark.parametrize("months", [0, 13, -1, 24])
def test_rotate_extend_months_refused(admin: Admin, store: SQLiteStore, months: int) -> None:
    """0 or more than 12 months is refused and the key is not rotated."""
    admin.create_key("acme", "ci")
    before = state(store)
    with pytest.raises(InputError, match="extend-months"):
        admin.rotate_key("acme", "ci", extend_months=months)
    assert state(store) == before


def test_rotate_extend_past_max_lifetime_refused(admin: Admin, store: SQLiteStore, clock: FakeClock) -> None:
    """An extension that would end after now + key_max_lifetime is refused; the key stays as it was."""
    admin.create_key("acme", "ci", expires_in=MAX_LIFETIME - 20 * DAY)
    before = state(store)
    with pytest.raises(InputError, match="maximum lifetime"):
        admin.rotate_key("acme", "ci", extend_months=1)
    assert state(store) == before
    # Once time has passed, the same extension fits.
    clock.advance(20 * DAY)
    admin.rotate_key("acme", "ci", extend_months=1)


@pytest.mark.parametrize(
    ("org", "name", "exception", "match"),
    [
        ("acme", "ghost", NotFound, "ghost@acme"),
        ("nope", "ci", NotFound, "nope"),
        ("acme", "Ghost", InputError, "bad key name"),
        ("Acme", "ci", InputError, "bad org name"),
    ],
)
def test_rotate_missing_or_bad_key_refused(
    admin: Admin, store: SQLiteStore, org: str, name: str, exception: type[InputError], match: str
) -> None:
    """Rotating a key that does not exist, or is badly named, changes nothing."""
    before = state(store)
    with pytest.raises(exception, match=match):
        admin.rotate_key(org, name)
    assert state(store) == before


# -- listing and deleting keys --------------------------------------------------------


def test_list_keys_sorted(admin: Admin) -> None:
    """Keys are listed by name with their tokens."""
    admin.create_key("acme", "zeta")
    admin.create_key("acme", "alpha")
    admin.rotate_key("acme", "alpha")
    listed = admin.list_keys("acme")
    assert [(k.name, len(k.tokens)) for k in listed] == [("alpha", 2), ("zeta", 1)]


def test_delete_key_revokes_tokens(admin: Admin, store: SQLiteStore) -> None:
    """Deleting a key revokes every token at once, including one in its grace period."""
    old = admin.create_key("acme", "ci")
    new = admin.rotate_key("acme", "ci", grace=7 * DAY)
    admin.delete_key("acme", "ci")
    assert store.get_credential(old.token_id) is None
    assert store.get_credential(new.token_id) is None
    assert list(admin.list_keys("acme")) == []


@pytest.mark.parametrize(("name", "exception"), [("ghost", NotFound), ("Bad Name", InputError)])
def test_delete_key_missing_or_bad_refused(
    admin: Admin, store: SQLiteStore, name: str, exception: type[InputError]
) -> None:
    """Deleting an unknown or badly named key is refused and changes nothing."""
    admin.create_key("acme", "ci")
    before = state(store)
    with pytest.raises(exception):
        admin.delete_key("acme", name)
    assert state(store) == before


def test_list_keys_bad_org_refused(admin: Admin) -> None:
    """Listing keys of a malformed or unknown org is an InputError."""
    with pytest.raises(InputError, match="bad org name"):
        admin.list_keys("ACME")
    with pytest.raises(NotFound):
        admin.list_keys("nope")


def test_admin_hasher_built_lazily(store: SQLiteStore, settings: Settings, clock: FakeClock) -> None:
    """Listing does not pay for argon2 set-up; the hasher is built on the first create."""
    admin = Admin(store, settings, clock)
    admin.create_org("acme")
    admin.list_keys("acme")
    assert admin._hasher is None
    admin.create_key("acme", "ci")
    assert admin._hasher is not None


# -- helpers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "months", "end"),
    [
        ("2027-01-31T00:00:00", 1, "2027-02-28T00:00:00"),
        ("2028-01-31T00:00:00", 1, "2028-02-29T00:00:00"),
        ("2028-02-29T00:00:00", 12, "2029-02-28T00:00:00"),
        ("2027-03-31T00:00:00", 1, "2027-04-30T00:00:00"),
        ("2027-10-31T00:00:00", 1, "2027-11-30T00:00:00"),
        ("2027-11-30T00:00:00", 3, "2028-02-29T00:00:00"),
        ("2027-12-31T23:59:59", 1, "2028-01-31T23:59:59"),
        ("2027-12-15T00:00:00", 12, "2028-12-15T00:00:00"),
        ("2027-01-15T08:00:00", 0, "2027-01-15T08:00:00"),
        ("2027-05-31T00:00:00", -3, "2027-02-28T00:00:00"),
        ("2027-01-31T00:00:00", -1, "2026-12-31T00:00:00"),
        ("2027-06-15T12:34:56.500000", 1, "2027-07-15T12:34:56.500000"),
    ],
)
def test_add_months_calendar(start: str, months: int, end: str) -> None:
    """Calendar months with the day clamped to the month's end; the time of day is kept."""
    assert add_months(at(start), months) == at(end)


@pytest.mark.parametrize(
    ("timestamp", "text"),
    [
        (None, None),
        (at("2027-01-15T08:00:00"), "2027-01-15T08:00:00Z"),
        (at("2027-01-15T08:00:00.9"), "2027-01-15T08:00:00Z"),
    ],
)
def test_iso_utc(timestamp: float | None, text: str | None) -> None:
    """Listings show UTC times to the second with a ``Z``."""
    assert iso(timestamp) == text
