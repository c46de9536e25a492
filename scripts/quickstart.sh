#!/usr/bin/env bash
# Set up (if needed), then build the quickstart dataset with the embedded digits model:
# validate -> plan -> apply -> report, offline, on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec diffspec quickstart "$@"
