#!/usr/bin/env bash
# Bring up what the test suite needs outside Python, on a fresh Debian machine.
# Idempotent: does nothing when everything is there already.
set -euo pipefail

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v nginx >/dev/null || need+=(nginx-light)
command -v caddy >/dev/null || need+=(caddy)
command -v wrk >/dev/null || need+=(wrk)
# The tests of real clients: a web map in Chromium, GDAL's tile reader.
command -v chromium >/dev/null || need+=(chromium)
command -v gdal_translate >/dev/null || need+=(gdal-bin)
# The PostgreSQL store's tests: a server on 127.0.0.1:5432, and initdb/pg_ctl for
# the fault tests' servers of their own (psycopg's wheel brings its own libpq).
pg_bin=/usr/lib/postgresql/15/bin
[ -x "$pg_bin/initdb" ] || need+=(postgresql-15)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "system-deps: missing ${need[*]}; install them (apt-get install ${need[*]}) or run as root" >&2
    exit 1
  fi
  echo "system-deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The tests use the Redis on 127.0.0.1:6379 (a database number of their own).
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "system-deps: starting redis-server on 127.0.0.1:6379" >&2
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "${TMPDIR:-/tmp}" --logfile "${TMPDIR:-/tmp}/fluxauth-test-redis.log"
  for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null
fi

# The tests use the PostgreSQL on 127.0.0.1:5432 (user postgres, trust), each
# session a database of its own; FLUXAUTH_TEST_POSTGRES names another. Where
# none answers, start one of our own.
if [ -z "${FLUXAUTH_TEST_POSTGRES:-}" ]; then
  if ! "$pg_bin/pg_isready" -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    pg_data="${TMPDIR:-/tmp}/fluxauth-test-postgres"
    as_postgres=()
    [ "$(id -u)" = 0 ] && as_postgres=(runuser -u postgres --)
    echo "system-deps: starting PostgreSQL on 127.0.0.1:5432 ($pg_data)" >&2
    if [ ! -s "$pg_data/PG_VERSION" ]; then
      mkdir -p "$pg_data"
      [ "$(id -u)" = 0 ] && chown postgres:postgres "$pg_data"
      "${as_postgres[@]}" "$pg_bin/initdb" -D "$pg_data" -U postgres --auth=trust -E UTF8 >/dev/null
    fi
    "${as_postgres[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_data/server.log" -w start \
      -o "-p 5432 -c listen_addresses=127.0.0.1 -c unix_socket_directories=$pg_data" >/dev/null
  fi
  if ! "$pg_bin/psql" -w -Atq -c "SELECT 1" "postgresql://postgres@127.0.0.1:5432/postgres" >/dev/null 2>&1; then
    echo "system-deps: the PostgreSQL on 127.0.0.1:5432 does not let user postgres in without a password;" \
      "set FLUXAUTH_TEST_POSTGRES to the URL of one that lets the tests create databases" >&2
    exit 1
  fi
fi

# The browser tests drive Debian's Chromium with playwright-core, which never
# downloads a browser; it and MapLibre GL JS come from the npm registry, pinned by
# tests/browser/package-lock.json. Reinstalled only when that lock file changes.
browser="$(cd "$(dirname "$0")/.." && pwd)/tests/browser"
if ! command -v npm >/dev/null || [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  echo "system-deps: the browser tests need Node.js >= 20 with npm (for playwright-core); install them" >&2
  exit 1
fi
lock_sum="$(sha256sum "$browser/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$browser/node_modules/.fluxauth-lock-sha256" 2>/dev/null)" != "$lock_sum" ]; then
  echo "system-deps: npm ci in tests/browser (maplibre-gl, playwright-core)" >&2
  (cd "$browser" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$lock_sum" >"$browser/node_modules/.fluxauth-lock-sha256"
fi
