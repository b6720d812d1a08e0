#!/usr/bin/env bash
# The stock tile servers the route tests run behind fluxauth (TiTiler, xpublish with
# xpublish-tiles and xpublish-wms, MapProxy under gunicorn), in a virtual environment of
# their own: .venv-stock.
#
# They need Python >= 3.12 (xpublish-tiles 0.12), while fluxauth's own .venv runs on
# the machine's python3. The environment is rebuilt only when
# tests/stock/requirements.txt changes (its checksum is kept in the venv), as the
# browser test's node_modules are; a fresh build takes about two minutes.
#
# Usage: scripts/stock-servers.sh [VENV]   (default: .venv-stock next to this script's repo)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$root/.venv-stock}"
requirements="$root/tests/stock/requirements.txt"
stamp="$venv/.fluxauth-requirements-sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"

if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && [ -x "$venv/bin/python" ]; then
  exit 0
fi

# A Python >= 3.12: $STOCK_PYTHON, else pyenv's newest 3.12 (then 3.13), else one on PATH.
usable() { "$1" -c 'import sys, venv; sys.exit(sys.version_info[:2] < (3, 12))' 2>/dev/null; }
python="${STOCK_PYTHON:-}"
if [ -z "$python" ]; then
  pyenv_root="${PYENV_ROOT:-$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")}"
  for candidate in $(ls -d "$pyenv_root"/versions/3.12.* 2>/dev/null | sort -rV) \
    $(ls -d "$pyenv_root"/versions/3.13.* 2>/dev/null | sort -rV) \
    "$(command -v python3.12 || true)" "$(command -v python3.13 || true)"; do
    candidate="${candidate%/}"
    [ -d "$candidate" ] && candidate="$candidate/bin/python"
    if [ -n "$candidate" ] && usable "$candidate"; then
      python="$candidate"
      break
    fi
  done
fi
if [ -z "$python" ] || ! usable "$python"; then
  echo "stock-servers: need Python >= 3.12 for xpublish-tiles (none in pyenv or on PATH);" \
    "install one (pyenv install 3.12) or set STOCK_PYTHON" >&2
  exit 1
fi

echo "stock-servers: building $venv with $("$python" --version) (TiTiler, xpublish, xpublish-tiles, xpublish-wms, MapProxy)" >&2
started=$SECONDS
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
if ! "$venv/bin/pip" install --quiet --no-deps -r "$requirements" 2>"$venv.log"; then
  grep -v "^WARNING: Location" "$venv.log" >&2
  echo "stock-servers: pip failed; $venv removed" >&2
  rm -rf "$venv"
  exit 1
fi
rm -f "$venv.log"
"$venv/bin/python" -c 'import titiler.application.main, xpublish, xpublish_tiles, xpublish_wms, rasterio, zarr, mapproxy.multiapp, gunicorn'
echo "$want" >"$stamp"
echo "stock-servers: ready in $((SECONDS - started)) s" >&2
