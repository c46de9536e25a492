"""`import diffspec`, `diffspec validate` and `diffspec plan` never import the heavy stack
(torch, diffusers, transformers, ray): they must start fast and install light in CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "diffusers", "transformers", "ray", "accelerate")

SCRIPT = r"""
import json, shutil, sys, os
from pathlib import Path

import diffspec
after_import = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)

from typer.testing import CliRunner
from diffspec.cli import app

work = Path(WORK)
shutil.copytree(Path(REPO) / "specs", work / "specs")
os.chdir(work)
runner = CliRunner()
results = {}
for args in (["validate", "specs/quickstart.yaml"], ["validate", "specs"], ["plan", "specs/quickstart.yaml"],
             ["plan", "specs/ads.yaml", "--format", "json"], ["plan", "specs/pizza.yaml", "--out", "plan.json"],
             ["schema"]):
    result = runner.invoke(app, args)
    results[" ".join(args)] = result.exit_code
diffspec.Project  # the lazy facade
diffspec.load_spec
print(json.dumps({
    "after_import": after_import,
    "after_commands": sorted(m for m in sys.modules if m.split(".")[0] in HEAVY),
    "exit_codes": results,
}))
"""


def test_validate_and_plan_do_not_import_the_heavy_stack(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    code = f"HEAVY = {HEAVY!r}\nREPO = {str(REPO)!r}\nWORK = {str(tmp_path)!r}\n" + SCRIPT
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["exit_codes"] == {
        "validate specs/quickstart.yaml": 0,
        "validate specs": 0,
        "plan specs/quickstart.yaml": 0,
        "plan specs/ads.yaml --format json": 0,
        "plan specs/pizza.yaml --out plan.json": 0,
        "schema": 0,
    }
    assert report["after_import"] == []
    assert report["after_commands"] == [], f"heavy modules imported: {report['after_commands']}"


def test_gpu_check_says_plainly_that_there_is_no_cuda_here() -> None:
    """bench/gpu_check.py is for CUDA machines; without one it exits 2 with a message, no traceback."""
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: run bench/gpu_check.py itself")
    script = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"
    proc = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no CUDA device here" in proc.stderr and "Traceback" not in proc.stderr


def test_spec_and_plan_do_not_import_generate() -> None:
    """The tables both need live below them (diffspec.tables): `generate` is a layer above."""
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for package in ("spec", "plan", "tables")
        for path in sorted((REPO / "diffspec" / package).rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if line.strip().startswith(("from diffspec.generate", "import diffspec.generate"))
    ]
    assert offenders == []
    code = (
        "import sys\n"
        "import diffspec.spec.loader, diffspec.plan.compile, diffspec.plan.diff, diffspec.plan.estimate, diffspec.tables.families\n"
        "print(sorted(m for m in sys.modules if m.startswith('diffspec.generate')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_reading_the_catalog_imports_neither_pandas_nor_pyarrow_dataset(tmp_path: Path) -> None:
    """Each costs 0.3-0.4 s at import, in every fresh `plan` and `status`: the catalog is read
    with Parquet's file reader, and an empty table is built without pandas. (Writing rows goes
    without it too: tests/unit/test_catalog_columns.py.)"""
    from datetime import datetime, timezone

    from diffspec.catalog.records import ImageRecord
    from diffspec.catalog.store import Catalog

    cat = Catalog(tmp_path)
    for part in range(5):
        rows = [
            ImageRecord(
                fingerprint=f"{part}-{i}",
                class_name="a",
                path=f"images/a/{part}-{i}.png",
                run_id="r",
                created_at=datetime.now(timezone.utc),
            )
            for i in range(3)
        ]
        cat.append_images(rows, "20260101T000000-aaaaaa")
    code = f"""
import sys
from pathlib import Path
from diffspec.catalog.store import Catalog
cat = Catalog(Path({str(tmp_path)!r}))
assert len(cat.index()) == 15 and cat.live_images(["fingerprint"]).num_rows == 15
assert cat.read_table("removed", ["fingerprint"]).num_rows == 0
print(sorted(m for m in ("pandas", "pyarrow.dataset") if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout
