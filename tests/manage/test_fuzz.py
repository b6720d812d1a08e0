"""schemathesis against openapi.json: no 5xx, and every answer as the document says (status, type, headers, schema).

The fuzzer runs as its command line does, against a running fluxauth, as
``fuzz-admin-7f3a@acme`` (a name its generators will not hit, so it does not
delete or rotate away its own key); path ``org`` is pinned to acme, since every
other org answers the same 404. Bounded: a fixed seed, a few dozen cases per
operation and a time budget well inside the test command's.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

from fluxauth.config.settings import Settings
from fluxauth.manage.admin import Admin
from tests.conftest import ProxyFactory
from tests.manage.conftest import API

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)


def schemathesis(url: str, token: str, tmp_path: Path, name: str, *options: str, config: Path | None = None) -> None:
    """One bounded run of schemathesis's command line; fails the test with its report if it found anything."""
    report = tmp_path / f"{name}.json"
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            *(["--config-file", str(config)] if config else []),
            "run",
            f"{url}{API}/openapi.json",
            "--auth",
            f"acme:{token}",
            *options,
            "--seed",
            "14",
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--report",
            "json",
            "--report-json-path",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, f"schemathesis ({name}):\n" + done.stdout[-12000:] + done.stderr[-2000:]
    assert "passed" in done.stdout, done.stdout


def test_schemathesis_finds_nothing(
    admin: Admin, proxy_factory: ProxyFactory, settings: Settings, tmp_path: Path
) -> None:
    """Two bounded runs find nothing: every operation on acme's own data, then schema-breaking input anywhere.

    The first pins the path's org to acme (so the operations reach keys, services
    and audit) and checks every answer against the document. Pinning would turn
    some of the second run's invalid orgs into valid ones, so that run, of
    negative cases only (each must be refused with a 4xx), leaves the org free.
    """
    # Negative cases send malformed credentials by the thousand: the failure limit
    # (tested elsewhere) would soon answer everything with 429.
    proxy = proxy_factory(dataclasses.replace(settings, rate_limit_failures=1_000_000))
    admin.create_org("acme")
    admin.enable_service("acme", "tiles")
    token = admin.create_key("acme", "fuzz-admin-7f3a", permissions=["manage_org_users"]).token
    admin.create_key("acme", "reader", permissions=["read"])
    config = tmp_path / "schemathesis.toml"
    config.write_text('[parameters]\n"path.org" = "acme"\n')
    common = ("--phases", "examples,coverage,fuzzing", "--max-examples", "25")
    schemathesis(
        proxy.url, token, tmp_path, "acme", "--checks", ",".join(CHECKS), *common, "--max-time", "50", config=config
    )
    schemathesis(
        proxy.url, token, tmp_path, "negative", "--mode", "negative", "--checks",
        "not_a_server_error,negative_data_rejection,response_schema_conformance", *common, "--max-time", "30",
    )  # fmt: skip
    assert proxy.app.outcomes.get(500, 0) == 0
