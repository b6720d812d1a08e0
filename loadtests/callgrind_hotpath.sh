#!/usr/bin/env bash
# The hot path's instructions per cached tile, under valgrind's callgrind: deterministic where
# timings are not, for an A/B of a change. (Ir at 3000 requests - Ir at 1000) / 2000 of
# loadtests/micro_hotpath.py --tile-only; extra arguments go to it (--route).
#   loadtests/callgrind_hotpath.sh [--route]     (apt-get install valgrind)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
ir() {
    valgrind --tool=callgrind --callgrind-out-file="$out/cg" .venv/bin/python loadtests/micro_hotpath.py \
        --tile-only --rounds 1 --requests "$1" "${@:2}" >"$out/log" 2>"$out/err" || { cat "$out/log" "$out/err" >&2; exit 1; }
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$out/err"
}
a=$(ir 1000 "$@")
b=$(ir 3000 "$@")
echo "$(( (b - a) / 2000 )) instructions per cached tile${*:+ ($*)}"
