#!/usr/bin/env bash
# Creates the bench-only virtualenv for bench/peer_infinity.py (the infinity-emb embedding server) and
# installs bench/requirements-infinity.txt into it. It is kept apart from the project's .venv on purpose:
# infinity needs sentence-transformers<4 and transformers<5, the project uses newer ones.
#
# Idempotent: a stamp file inside the venv records the hash of the requirements file and the Python
# version; when both match, nothing is done. Environment:
#   INFINITY_VENV  where to create it (default: <repository>/.venv-infinity)
#   PYTHON         interpreter to create it with (default: python3)
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH_DIR")"
VENV="${INFINITY_VENV:-$ROOT/.venv-infinity}"
PYTHON="${PYTHON:-python3}"
REQUIREMENTS="$BENCH_DIR/requirements-infinity.txt"
STAMP="$VENV/.installed-requirements"

want="$(
    {
        sha256sum "$REQUIREMENTS" | cut -d' ' -f1
        "$PYTHON" -c 'import sys; print(sys.version.split()[0])'
    } | tr '\n' ' '
)"

if [[ -f "$STAMP" && -x "$VENV/bin/infinity_emb" && "$(cat "$STAMP")" == "$want" ]]; then
    echo "==> infinity venv $VENV is up to date (remove $STAMP to reinstall)"
    exit 0
fi

start=$SECONDS
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "==> creating virtualenv $VENV for the infinity-emb benchmark (bench only, not the project's .venv)"
    "$PYTHON" -m venv "$VENV"
else
    echo "==> reusing virtualenv $VENV (requirements changed or install unfinished)"
fi
# Keep the venv out of git, ruff and friends without touching the repository's .gitignore.
echo '*' >"$VENV/.gitignore"
rm -f "$STAMP"

echo "==> installing $(basename "$REQUIREMENTS") (infinity-emb, torch CPU, sentence-transformers 3; first run: a minute or two)"
"$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar on -r "$REQUIREMENTS"

echo "==> checking the installed environment"
"$VENV/bin/python" -m pip check --disable-pip-version-check
"$VENV/bin/python" -c 'import importlib.metadata as m, infinity_emb, torch; print("    infinity-emb", m.version("infinity-emb"), "| torch", torch.__version__)'

echo "$want" >"$STAMP"
echo "==> infinity venv ready in $((SECONDS - start)) s: $VENV ($(du -sh "$VENV" | cut -f1))"
