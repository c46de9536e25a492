"""Shared helpers of the fault drills (no tests here): a tiny spec on the embedded digits model,
one finished apply copied per test, and the CLI run as a real subprocess."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_DONE: dict[str, Path] = {}

SPEC = """\
version: 1
dataset: drill
output: out
models:
  digits: {source: "builtin:digits", scheduler: ddim}
defaults: {model: digits, size: [32, 32], steps: 2, guidance: 3.0, seed: 5}
budget: {devices: cpu, max_batch: 4, workers: 1}
classes:
  zero: {target: 6, prompt: "a thin handwritten zero"}
  one:  {target: 6, prompt: "a thick handwritten one"}
"""
PLANNED = 12

# Holds the output lock as apply does, and (with "churn") keeps appending parts that repeat
# the catalog's rows and compacting them, as a long apply does every 256 parts.
HOLDER_SCRIPT = r"""
import sys, time
from pathlib import Path
from diffspec.catalog.lock import OutputLock
from diffspec.catalog.records import ImageRecord
from diffspec.catalog.store import Catalog
output, churn = Path(sys.argv[1]), sys.argv[2] == "churn"
lock = OutputLock(output, "holder-run").acquire()
print("locked", flush=True)
cat = Catalog(output)
rows = [ImageRecord(**{**r, "classes": tuple(r["classes"] or ())}) for r in cat.live_images().to_pylist()]
n = 0
while True:
    if churn:
        run = f"churn{n:05}"
        for i in range(0, len(rows), 4):
            cat.append_images(rows[i:i + 4], run)
        cat.compact("images", run)
        n += 1
    else:
        time.sleep(0.2)
"""


@dataclass(frozen=True)
class Ran:
    rc: int
    out: str
    err: str

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.err or "internal error" in self.err


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "COLUMNS": "200",
    }


def cli(*args: str | Path, timeout: float = 300) -> Ran:
    proc = subprocess.run(
        [sys.executable, "-m", "diffspec.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env(),
        timeout=timeout,
    )
    return Ran(proc.returncode, proc.stdout, proc.stderr)


def write_spec(folder: Path, text: str = SPEC) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    return folder / "spec.yaml"


def applied(folder: Path) -> Path:
    """A copy of a finished apply of SPEC under ``folder``; returns the spec path. The first
    call per session runs the apply through the CLI."""
    if "base" not in _DONE:
        import tempfile

        base = Path(tempfile.mkdtemp(prefix="diffspec-fault-")) / "base"
        spec = write_spec(base)
        ran = cli("apply", spec, "-q")
        assert ran.rc == 0, ran.err
        _DONE["base"] = base
    shutil.copytree(_DONE["base"], folder)
    return folder / "spec.yaml"


def audit(output: Path) -> dict[str, int]:
    """rows (live), duplicated fingerprints among live rows, rows whose file is missing or
    differs from its sha256, and temp files left."""
    from diffspec.catalog.store import Catalog

    live = Catalog(output).live_images(["fingerprint", "path", "sha256"]).to_pylist()
    fps = [r["fingerprint"] for r in live]
    corrupt = 0
    for r in live:
        path = output / r["path"]
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != r["sha256"]:
            corrupt += 1
    temps = sum(1 for p in output.rglob("*") if ".tmp-" in p.name)
    return {"rows": len(live), "duplicated": len(fps) - len(set(fps)), "corrupt": corrupt, "temp_files": temps}
