#!/usr/bin/env bash
# The light install: `pip install .` with no extras must run validate, plan, query, status and
# schema (what CI and a laptop without torch use). Builds a throwaway venv, installs the worktree
# into it, runs the five commands on a copy of specs/quickstart.yaml (so the output root is a
# temp folder), and fails loudly on any error, or if torch, diffusers, transformers or PIL got in.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "check_light_install: FAILED: $*" >&2; exit 1; }

python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install --quiet --disable-pip-version-check "$repo" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2) || fail "pip install . (no extras)"
for heavy in torch diffusers transformers PIL ray; do
    if "$py" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$heavy') is None)"; then
        fail "the core install pulled in $heavy"
    fi
done

mkdir -p "$work/specs"
cp "$repo/specs/quickstart.yaml" "$work/specs/"
cd "$work"
ds="$work/venv/bin/diffspec"
run() {
    echo "+ diffspec $*"
    local rc=0
    "$ds" "$@" >"$work/out.txt" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then cat "$work/out.txt" >&2; fail "diffspec $* exited $rc"; fi
    if grep -q "Traceback\|ModuleNotFoundError" "$work/out.txt"; then cat "$work/out.txt" >&2; fail "diffspec $* printed a traceback"; fi
    tail -n 3 "$work/out.txt"
}
run validate specs/quickstart.yaml
run validate "$repo/specs"  # every shipped spec (validate reads, never writes)
run plan specs/quickstart.yaml
run plan specs/quickstart.yaml --format json
run status specs/quickstart.yaml
run query "select count(*) as n from images" --spec specs/quickstart.yaml
run schema
echo "check_light_install: ok (validate, plan, status, query, schema on the core install)"
