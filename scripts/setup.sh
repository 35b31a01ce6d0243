#!/usr/bin/env bash
# Set up everything jaxlm needs on a fresh Debian/Ubuntu machine with Python >= 3.11:
# the Debian packages of the embedded corpus, a virtual environment in .venv, jaxlm (with the extra named, if any),
# the human sentiment ratings (`jaxlm fetch-ratings`).
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh [EXTRA]
#   bash scripts/setup.sh        what the main job needs (no torch, no libtpu)
#   bash scripts/setup.sh test   and the test suite's (transformers and CPU torch for parity, libtpu, wandb)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg in wordnet-base fortunes; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "[setup] installing Debian packages: ${need_apt[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), "jaxlm needs Python >= 3.11 (jax, flax, orbax and grain require it); set PYTHON=python3.11"'
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
extra=${1:-}
target=.; [ -n "$extra" ] && target=".[$extra]"
stamp=.venv/.jaxlm-installed${extra:+-$extra}
installed() { [ -f "$1" ] && [ ! pyproject.toml -nt "$1" ]; }
# (the test set-up holds the main one: a main job after the tests installs nothing)
if ! installed "$stamp" && { [ -n "$extra" ] || ! installed .venv/.jaxlm-installed-test; }; then
  echo "[setup] installing jaxlm${extra:+ with its $extra extra} into .venv (first time: a minute or more)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e "$target"
  touch "$stamp"
fi
# The human sentiment ratings (23,700 snippets, ~20 raters each) from the vaderSentiment 3.3.2 sdist, once.
[ -d "${JAXLM_RATINGS_DIR:-$HOME/.cache/jaxlm/vader-sentiment-3.3.2}/hutto_ICWSM_2014" ] || {
  echo "[setup] fetching the human sentiment ratings (jaxlm fetch-ratings)"
  .venv/bin/jaxlm fetch-ratings >/dev/null
}
