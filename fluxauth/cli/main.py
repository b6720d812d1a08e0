"""The ``fluxauth`` command (docs/architecture.md §7).

Every command takes ``--store`` and ``--config``; ``FLUXAUTH_*`` variables
override the config file. ``keys create`` and ``keys rotate`` print the new
token alone on stdout — the only place a secret is ever shown. Bad input, and a
store that cannot be reached, print one line on stderr and exit with status 2,
and change nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

from fluxauth.clock import system_clock
from fluxauth.config.durations import format_duration, parse_duration
from fluxauth.config.settings import Settings, load_settings
from fluxauth.errors import Conflict, FluxAuthError, InputError, StoreUnavailable
from fluxauth.manage.admin import AUDIT_PAGE, Admin, IssuedToken, iso
from fluxauth.manage.schemas import AuditEventView, IssuedView, KeyView, dump
from fluxauth.names import split_repository
from fluxauth.store import Change, KeyRecord, Store, open_store
from fluxauth.store.copy import copy_store

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump), exit status 2, and no abbreviations.

    Abbreviations (``--perm`` for ``--permission``) would quietly become part
    of the interface that scripts rely on.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"fluxauth: error: {message}\n")


def _duration(text: str) -> int:
    try:
        return parse_duration(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _repo_grant(text: str) -> tuple[str, str]:
    repo, equals, access = text.partition("=")
    if not equals or access not in ("read", "write"):
        raise argparse.ArgumentTypeError(f"bad --repo {text!r}: expected REPO=read or REPO=write")
    return repo, access


def _moment(text: str) -> float:
    """An ISO 8601 time (``2027-01-15``, ``2027-01-15T08:00:00Z``); without a zone, UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad time {text!r}: expected ISO 8601, e.g. 2027-01-15T08:00:00Z") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"bad number {text!r}: expected a whole number >= 1")
    return int(text)


def _months(text: str) -> int:
    # isascii(): str.isdigit() accepts "³", which int() refuses.
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 12:
        raise argparse.ArgumentTypeError(f"bad --extend-months {text!r}: expected 1 to 12")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--store", help="store URL or SQLite file (env FLUXAUTH_STORE)")
    common.add_argument("--config", help="TOML config file (env FLUXAUTH_CONFIG)")

    parser = _Parser(prog="fluxauth", description="HTTP Basic authentication in front of compute services.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run the proxy")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--upstream", help="default upstream URL (env FLUXAUTH_UPSTREAM)")
    serve.add_argument("--redis", help="Redis URL for the shared cache (env FLUXAUTH_REDIS_URL)")
    serve.add_argument("--workers", type=int, default=1)

    orgs = commands.add_parser("orgs", help="organizations").add_subparsers(dest="action", required=True)
    orgs.add_parser("create", parents=[common]).add_argument("org")

    compute = commands.add_parser("compute", help="compute services of an org").add_subparsers(
        dest="action", required=True
    )
    enable = compute.add_parser("enable", parents=[common])
    enable.add_argument("org")
    enable.add_argument("protocol")
    enable.add_argument("--is-public", action="store_true", help="anyone may read, without credentials")
    disable = compute.add_parser("disable", parents=[common])
    disable.add_argument("org")
    disable.add_argument("protocol")
    listing = compute.add_parser("list", parents=[common])
    listing.add_argument("org")
    listing.add_argument("--json", action="store_true")

    keys = commands.add_parser("keys", help="API keys (service accounts name@org)").add_subparsers(
        dest="action", required=True
    )
    create = keys.add_parser("create", parents=[common])
    create.add_argument("org")
    create.add_argument("name")
    create.add_argument("--permission", action="append", default=[], choices=["read", "write", "manage_org_users"])
    create.add_argument("--repo", action="append", default=[], type=_repo_grant, metavar="REPO=read|write")
    create.add_argument("--expires-in", type=_duration, metavar="DURATION", help="e.g. 90d (default 365d)")
    create.add_argument("--json", action="store_true")
    key_list = keys.add_parser("list", parents=[common])
    key_list.add_argument("org")
    key_list.add_argument("--json", action="store_true")
    rotate = keys.add_parser("rotate", parents=[common])
    rotate.add_argument("org")
    rotate.add_argument("name")
    rotate.add_argument("--grace", type=_duration, default=None, metavar="DURATION", help="0s to 7d (default 1d)")
    rotate.add_argument("--extend-months", type=_months, metavar="N", help="extend the expiry by 1 to 12 months")
    rotate.add_argument("--json", action="store_true")
    revoke = keys.add_parser("revoke-token", parents=[common], help="end a rotated-out token's grace now")
    revoke.add_argument("org")
    revoke.add_argument("name")
    revoke.add_argument("token_id")
    delete = keys.add_parser("delete", parents=[common])
    delete.add_argument("org")
    delete.add_argument("name")

    audit = commands.add_parser("audit", parents=[common], help="an org's audit log, newest first")
    audit.add_argument("org")
    audit.add_argument("--since", type=_moment, metavar="TIME", help="events at or after TIME (ISO 8601)")
    audit.add_argument("--until", type=_moment, metavar="TIME", help="events before TIME")
    audit.add_argument("--actor", help="cli, or a key name@org")
    audit.add_argument("--before", type=_count, metavar="SEQ", help="the next page: events before SEQ")
    audit.add_argument("--limit", type=_count, default=AUDIT_PAGE, help=f"at most this many (default {AUDIT_PAGE})")
    audit.add_argument("--json", action="store_true")

    repos = commands.add_parser("repos", help="repository settings").add_subparsers(dest="action", required=True)
    visibility = repos.add_parser("visibility", parents=[common])
    visibility.add_argument("repository", metavar="ORG/REPO")
    visibility.add_argument("visibility", choices=["private", "authenticated", "public"])

    store = commands.add_parser("store", help="the store itself").add_subparsers(dest="action", required=True)
    copy = store.add_parser(
        "copy",
        help="copy everything into an empty store (e.g. from SQLite to PostgreSQL)",
        description="Copy every org, service, repo setting, key, token, audit event and the cache secret"
        " from FROM_URL into the empty store TO_URL, of either kind. Tokens keep working.",
    )
    copy.add_argument("source", metavar="FROM_URL")
    copy.add_argument("target", metavar="TO_URL")
    copy.add_argument("--config", help="TOML config file (env FLUXAUTH_CONFIG)")

    demo = commands.add_parser("demo", parents=[common], help="run a demo: a tile server behind fluxauth")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--upstream-port", type=int, default=8001)
    return parser


def _keeping_old_names(view: dict[str, Any]) -> dict[str, Any]:
    """A key's JSON as the API writes it, with ``repo_grants`` too: what ``--json`` printed before the API."""
    return {**view, "repo_grants": view["repos"]}


def _issued(issued: IssuedToken, as_json: bool) -> None:
    # --json: the management API's answer to create and rotate, field for field (and the old name).
    print(json.dumps(_keeping_old_names(dump(IssuedView.of(issued)))) if as_json else issued.token)


def _tokens(key: KeyRecord) -> str:
    return ",".join(
        token.token_id + ("" if token.not_after is None else f"(until {iso(token.not_after)})") for token in key.tokens
    )


def _run_admin(args: argparse.Namespace, admin: Admin) -> None:
    command = (args.command, getattr(args, "action", None))
    if command == ("orgs", "create"):
        admin.create_org(args.org)
        print(f"created org {args.org}")
    elif command == ("compute", "enable"):
        admin.enable_service(args.org, args.protocol, is_public=args.is_public)
        print(f"enabled {args.protocol} for {args.org}" + (" (public)" if args.is_public else ""))
    elif command == ("compute", "disable"):
        admin.disable_service(args.org, args.protocol)
        print(f"disabled {args.protocol} for {args.org}")
    elif command == ("compute", "list"):
        services = admin.list_services(args.org)
        if args.json:
            print(
                json.dumps([{"protocol": s.protocol, "enabled": s.enabled, "is_public": s.is_public} for s in services])
            )
        else:
            for service in services:
                state = "enabled" if service.enabled else "disabled"
                print(f"{service.protocol:8} {state:9} {'public' if service.is_public else 'private'}")
    elif command == ("keys", "create"):
        _issued(
            admin.create_key(
                args.org,
                args.name,
                permissions=args.permission,
                repo_grants=dict(args.repo),
                expires_in=args.expires_in,
            ),
            args.json,
        )
    elif command == ("keys", "list"):
        keys = admin.list_keys(args.org)
        if args.json:
            print(json.dumps([_keeping_old_names(view) for view in dump([KeyView.of(key) for key in keys])]))
        else:
            for key in keys:
                grants = ",".join(f"{repo}={access}" for repo, access in sorted(key.repo_grants.items())) or "-"
                print(
                    f"{key.principal}  permissions={','.join(sorted(key.permissions)) or '-'}  repos={grants}"
                    f"  expires={iso(key.expires_at)}  last_used={iso(key.last_used_at) or 'never'}"
                    f"  tokens={len(key.tokens)} {_tokens(key)}"
                )
    elif command == ("keys", "rotate"):
        grace = {} if args.grace is None else {"grace": args.grace}
        issued = admin.rotate_key(args.org, args.name, extend_months=args.extend_months, **grace)
        _issued(issued, args.json)
        if not args.json:
            ends = format_duration(args.grace) if args.grace is not None else "1d"
            print(f"the previous token stays valid for {ends}", file=sys.stderr)
    elif command == ("keys", "revoke-token"):
        admin.revoke_token(args.org, args.name, args.token_id)
        print(f"token {args.token_id} of {args.name}@{args.org} no longer works")
    elif command == ("keys", "delete"):
        admin.delete_key(args.org, args.name)
        print(f"deleted key {args.name}@{args.org} and all its tokens")
    elif command == ("repos", "visibility"):
        org, repo = split_repository(args.repository)
        admin.set_visibility(org, repo, args.visibility)
        print(f"{org}/{repo} is {args.visibility}")
    elif args.command == "audit":
        events = admin.audit(
            args.org, since=args.since, until=args.until, actor=args.actor, before=args.before, limit=args.limit
        )
        if args.json:
            print(json.dumps(dump([AuditEventView.of(event) for event in events])))
        else:
            for event in events:
                client = f" from {event.client}" if event.client else ""
                detail = f"  ({event.detail})" if event.detail else ""
                print(
                    f"{event.seq:>6}  {iso(event.at)}  {event.actor}{client}  {event.action} {event.target}"
                    f"  {event.outcome}{detail}"
                )


def _announce(settings: Settings, changes: Sequence[Change]) -> None:
    """Tell running servers through Redis, if configured, so that they need not wait for the feed."""
    if not changes or not settings.redis_url:
        return
    from fluxauth.auth.shared import announce

    reached = asyncio.run(announce(settings.redis_url, clock=system_clock))
    if not reached:
        print("fluxauth: warning: Redis unreachable; servers see the change within a second", file=sys.stderr)


def _open(settings: Settings, url: str | None = None) -> Store:
    return open_store(url or settings.store, timeout=settings.store_timeout, pool_size=1)


def _copy(args: argparse.Namespace, settings: Settings) -> None:
    source = _open(settings, args.source)
    try:
        target = _open(settings, args.target)
        try:
            counts = copy_store(source, target)
        except Conflict as exc:
            raise InputError(f"{exc}: copy into an empty store") from None
        finally:
            target.close()
    finally:
        source.close()
    names = {"orgs": "orgs", "services": "services", "repos": "repo settings", "keys": "keys", "tokens": "tokens"}
    names |= {"changes": "changes", "audit": "audit events"}
    copied = ", ".join(f"{label} {counts[table]}" for table, label in names.items())
    print(f"copied from {source.where} to {target.where}: {copied}, and the cache secret")


def _serve(args: argparse.Namespace, settings: Settings) -> None:
    if args.workers < 1:
        raise InputError("--workers must be at least 1")
    # The store is opened here first, so that what no waiting mends (an
    # unknown scheme, a schema newer than this fluxauth) ends the command in
    # one line, exit 2. One that cannot be reached is no such reason: the
    # servers start unready and open it once it answers (they say so).
    with contextlib.suppress(StoreUnavailable):
        _open(settings).close()
    # Worker processes rebuild the settings from the environment.
    for name, value in (
        ("STORE", args.store),
        ("CONFIG", args.config),
        ("UPSTREAM", args.upstream),
        ("REDIS_URL", args.redis),
    ):
        if value:
            os.environ[f"FLUXAUTH_{name}"] = value
    from fluxauth.proxy.app import logging_config
    from fluxauth.server.run import serve

    if settings.admin_listen is not None and settings.admin_listen[1] == args.port:
        raise InputError(f"admin_listen: port {args.port} is the proxy's own (--port)")
    serve(
        host=args.host,
        port=args.port,
        workers=args.workers,
        admin_listen=settings.admin_listen,
        loop="uvloop",
        # httptools (llhttp) refuses ambiguous framing; this subclass adds what
        # uvicorn lacks: max_header_bytes (431) and client_header_timeout (408).
        http="fluxauth.server.protocol:LimitedHttpToolsProtocol",
        lifespan="on",
        # fluxauth decides whom to trust for X-Forwarded-For itself (trusted_proxies);
        # uvicorn's own handling would rewrite the client address first.
        proxy_headers=False,
        server_header=False,
        access_log=settings.log_level == "debug",
        log_level=settings.log_level,
        log_config=logging_config(settings.log_level),  # URL userinfo redacted in every line
        # Idle keep-alive connections close after 5 s (uvicorn's default, said here
        # because it is part of the slowloris bound: SECURITY.md).
        timeout_keep_alive=5,
        # Not set: limit_concurrency. uvicorn counts open connections against it,
        # so slow or idle clients would push real requests into 503s.
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(
            args.config,
            store=getattr(args, "store", None),
            upstream=getattr(args, "upstream", None),
            redis_url=getattr(args, "redis", None),
        )
        if args.command == "serve":
            _serve(args, settings)
            return 0
        if args.command == "demo":
            from fluxauth.demo.runner import run_demo

            run_demo(settings, port=args.port, upstream_port=args.upstream_port, store=args.store)
            return 0
        if args.command == "store":
            _copy(args, settings)
            return 0
        store = _open(settings)
        try:
            before = store.last_change()
            _run_admin(args, Admin(store, settings))
            _announce(settings, store.changes_since(before))
        finally:
            store.close()
    except FluxAuthError as exc:
        print(f"fluxauth: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def entry_point() -> NoReturn:
    sys.exit(main())
