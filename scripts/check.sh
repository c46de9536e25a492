#!/usr/bin/env bash
# Guard-rails CI runs before the tests: lint and format (ruff), types (mypy, strict on spec, plan,
# catalog and the tables), the layer contract (import-linter: a package imports only those below
# it; ruff TID253: no torch, diffusers, transformers or ray at module level outside generate/),
# and the light install (validate, plan, query, status, schema without the gen extra).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
. .venv/bin/activate
echo "+ ruff check";   ruff check .
echo "+ ruff format";  ruff format --check .
echo "+ mypy";         mypy
echo "+ lint-imports"; lint-imports
echo "+ light install"; bash scripts/check_light_install.sh
