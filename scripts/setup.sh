#!/usr/bin/env bash
# Set up diffspec on a fresh machine: a virtualenv in .venv with the CPU build of torch and the
# package installed editable with its generation, Ray and dev extras (CI tests the Ray executor
# for real, so Ray is part of the test set-up, not an optional skip). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# Pin torch only here: this machine kind has a CPU build of 2.13.0 on disk, while a plain
# `pip install torch` pulls a multi-GB CUDA build. pyproject.toml keeps the range open for users.
if ! python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  python -m pip install --quiet "torch==2.13.0"
fi
python -m pip install --quiet -e ".[gen,ray,dev]"
# An editable install leaves our modules uncompiled (pip compiles only what it copies), and
# with PYTHONDONTWRITEBYTECODE set, as on this machine kind, Python never caches them: every
# `diffspec` command would compile them again (0.08 s of each fresh apply). Compile them once.
python -m compileall -q diffspec >/dev/null
# The review page's browser test drives Debian's chromium through playwright (whose own browser
# download cannot work offline); install it only when missing, so a re-run stays quick.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
python -c "import diffspec, torch, diffusers; print(f'diffspec {diffspec.__version__} ready (torch {torch.__version__}, diffusers {diffusers.__version__})')"
