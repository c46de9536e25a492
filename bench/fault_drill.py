"""Fault drills: each fault a long generation job meets, injected for real, then audited.

    python bench/fault_drill.py            # every drill, one table
    python bench/fault_drill.py --runs 3   # each drill three times

Every drill starts from a finished apply of a 12-image spec on the embedded digits model,
injects its fault, drives the CLI (``python -m diffspec.cli``, a real subprocess) through the
recovery a user would run, and audits the output root: rows lost (planned rows missing after
recovery), rows duplicated (a fingerprint live twice), corrupt files (a live row whose file is
missing or fails its sha256, plus temp files left) and tracebacks (any CLI run that printed one
or an "internal error"). Prints one table: fault -> runs -> rows lost -> rows duplicated ->
corrupt files -> tracebacks. Exits 1 unless every figure but runs is 0.

The disk-full drill mounts a size-limited tmpfs (root only; elsewhere its row says why it was
skipped).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO))

from fault_support import HOLDER_SCRIPT, PLANNED, Ran, applied, audit, cli, env  # noqa: E402


class Drill:
    def __init__(self, spec: Path) -> None:
        self.spec = spec
        self.output = spec.parent / "out"
        self.ran: list[Ran] = []

    def cli(self, *args: str | Path) -> Ran:
        ran = cli(*args)
        self.ran.append(ran)
        return ran

    def finish(self, expected_rows: int = PLANNED) -> dict[str, int]:
        repair = self.cli("check", self.spec, "--repair")
        again = self.cli("apply", self.spec, "-q")
        a = audit(self.output)
        return {
            "lost": max(0, expected_rows - a["rows"]) + int(repair.rc != 0 or again.rc != 0),
            "duplicated": a["duplicated"] + max(0, a["rows"] - expected_rows),
            "corrupt": a["corrupt"] + a["temp_files"],
            "tracebacks": sum(r.traceback for r in self.ran),
        }


def _image_part(output: Path) -> Path:
    from diffspec.catalog.store import Catalog

    return Catalog(output).parts("images")[0]


def _readers_refuse(d: Drill) -> None:
    for args in (["status", d.spec], ["plan", d.spec], ["query", "SELECT count(*) FROM images", "--spec", d.spec]):
        d.cli(*args)


def truncated_part(d: Drill) -> dict[str, int]:
    part = _image_part(d.output)
    part.write_bytes(part.read_bytes()[:200])
    _readers_refuse(d)
    return d.finish()


def garbage_part(d: Drill) -> dict[str, int]:
    part = _image_part(d.output)
    data = bytearray(part.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 64] = b"\x5a" * 64
    part.write_bytes(bytes(data))
    _readers_refuse(d)
    return d.finish()


def deleted_image(d: Drill) -> dict[str, int]:
    from diffspec.catalog.store import Catalog

    rel = Catalog(d.output).live_images(["path"]).column("path")[0].as_py()
    (d.output / rel).unlink()
    d.cli("status", d.spec)
    return d.finish()


def garbage_image(d: Drill) -> dict[str, int]:
    from diffspec.catalog.store import Catalog

    rel = Catalog(d.output).live_images(["path"]).column("path")[0].as_py()
    (d.output / rel).write_bytes(b"garbage")
    d.cli("export", d.spec, d.spec.parent / "exported")
    return d.finish()


def two_applies(d: Drill) -> dict[str, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, str(d.output), "churn"], stdout=subprocess.PIPE, text=True, env=env()
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    try:
        more = d.spec.parent / "more.yaml"
        more.write_text(d.spec.read_text().replace("target: 6", "target: 8"))
        refused = [d.cli("apply", more, "-q"), d.cli("gc", d.spec)]
        readers = [
            d.cli("query", "SELECT count(*) AS n FROM images", "--spec", d.spec, "--format", "json"),
            d.cli("status", d.spec),
            d.cli("export", d.spec, d.spec.parent / "exported"),
        ]
    finally:
        proc.send_signal(signal.SIGKILL)  # and a holder killed with SIGKILL leaves a stale lock
        proc.wait(timeout=30)
    wrong = sum(r.rc != 1 or "another apply is running" not in r.err for r in refused)
    wrong += sum(r.rc != 0 for r in readers)
    wrong += json.loads(readers[0].out or "[{}]")[0].get("n") != PLANNED
    taken_over = d.cli("apply", more, "-q")
    out = d.finish(PLANNED + 4) if taken_over.rc == 0 else {"lost": 4, "duplicated": 0, "corrupt": 0, "tracebacks": 0}
    out["lost"] += wrong
    return out


def hostile_spec(d: Drill) -> dict[str, int]:
    cases = {
        "var file outside": 'a: {target: 1, prompt: "x {v}", vars: {v: {file: /etc/hostname}}}',
        "glob outside": 'a: {target: 1, prompt: "x", input: {images: "/usr/**/*.png"}}',
        "class name escapes": '"../x": {target: 1, prompt: "x"}',
    }
    accepted = 0
    for i, body in enumerate(cases.values()):
        path = d.spec.parent / f"hostile{i}.yaml"
        path.write_text(d.spec.read_text().split("classes:")[0] + "classes:\n  " + body + "\n")
        ran = d.cli("validate", path)
        accepted += ran.rc != 1
    for sql in (
        "COPY images TO '/tmp/leak.csv'",
        "SELECT * FROM read_csv('/etc/passwd')",
        "ATTACH 'x.db'",
        "SELECT 1; SELECT 2",
    ):
        accepted += d.cli("query", sql, "--spec", d.spec).rc != 1
    out = d.finish()
    out["lost"] += accepted  # a hostile input accepted counts against the drill
    return out


def _bigger(d: Drill, per_class: int) -> Path:
    """The drill's spec with more images per class (in place: same output root)."""
    d.spec.write_text(d.spec.read_text().replace("target: 6", f"target: {per_class}"))
    return d.spec


def disk_full(d: Drill) -> dict[str, int]:
    """The output root on a small tmpfs that fills mid-run; then space is freed."""
    import os

    if os.geteuid() != 0 or shutil.which("mount") is None:
        raise Skipped("needs root to mount a size-limited tmpfs")
    shutil.rmtree(d.output)
    d.output.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4096k", "tmpfs", str(d.output)], capture_output=True)
    if mounted.returncode != 0:
        raise Skipped(f"mounting a tmpfs is not allowed here: {mounted.stderr.decode().strip()}")
    try:
        spec = _bigger(d, 24)
        filler = d.output / "filler.bin"
        free = shutil.disk_usage(d.output).free
        filler.write_bytes(b"\0" * max(0, free - 96 * 1024))
        full = d.cli("apply", spec, "-q")
        wrong = int(full.rc != 1 or "no space left" not in full.err)
        filler.unlink()
        return {**(result := d.finish(48)), "lost": result["lost"] + wrong}
    finally:
        subprocess.run(["umount", "-l", str(d.output)], check=False)


def interrupts(d: Drill) -> dict[str, int]:
    """SIGINT, then SIGTERM, then two SIGTERMs in a row, each mid-run; then the run completes."""
    import time

    spec = _bigger(d, 200)
    counter = d.spec.parent / "writes.txt"
    wrong = 0
    for signals in ([signal.SIGINT], [signal.SIGTERM], [signal.SIGTERM, signal.SIGTERM]):
        start = len(counter.read_text().split()) if counter.exists() else 0
        proc = subprocess.Popen(
            [sys.executable, "-m", "diffspec.cli", "apply", str(spec), "-q"],
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**env(), "DIFFSPEC_WRITE_COUNTER": str(counter)},
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if counter.exists() and len(counter.read_text().split()) >= start + 24:
                break
            time.sleep(0.01)
        for sig in signals:
            proc.send_signal(sig)
            time.sleep(0.05)
        out, err = proc.communicate(timeout=120)
        d.ran.append(Ran(proc.returncode, out, err))
        # A second SIGTERM that lands after the command had already stopped, printed its summary
        # and restored the default handlers ends the exiting process itself: everything was
        # recorded and said by then, so that is a clean stop too.
        late = len(signals) > 1 and proc.returncode == -signal.SIGTERM and "resume with" in out
        wrong += (proc.returncode != 130 and not late) or "diffspec apply" not in out + err
    return {**(result := d.finish(400)), "lost": result["lost"] + wrong}


class Skipped(Exception):
    """The drill cannot run on this machine; the table says why."""


DRILLS: dict[str, Callable[[Drill], dict[str, int]] | None] = {
    "truncated catalog part": truncated_part,
    "garbage bytes in a part": garbage_part,
    "image file deleted": deleted_image,
    "garbage in place of an image": garbage_image,
    "two applies + readers + SIGKILLed holder": two_applies,
    "hostile spec paths and queries": hostile_spec,
    "disk full mid-run, then space freed": disk_full,
    "SIGINT, SIGTERM, a second SIGTERM mid-run": interrupts,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--only", default=None, help="run the drills whose name contains this")
    args = parser.parse_args()
    rows = []
    ok = True
    with tempfile.TemporaryDirectory(prefix="fault-drill-") as tmp:
        n = 0
        for name, drill in DRILLS.items():
            if args.only and args.only not in name:
                continue
            if drill is None:
                rows.append((name, "not built", "", "", "", ""))
                continue
            total = {"lost": 0, "duplicated": 0, "corrupt": 0, "tracebacks": 0}
            skipped = None
            for _ in range(args.runs):
                n += 1
                try:
                    result = drill(Drill(applied(Path(tmp) / f"d{n}")))
                except Skipped as why:
                    skipped = str(why)
                    break
                for k in total:
                    total[k] += result[k]
            if skipped:
                rows.append((name, f"skipped: {skipped}", "", "", "", ""))
                continue
            ok = ok and not any(total.values())
            rows.append(
                (name, str(args.runs), *(str(total[k]) for k in ("lost", "duplicated", "corrupt", "tracebacks")))
            )
            shutil.rmtree(Path(tmp) / f"d{n}", ignore_errors=True)
    header = ("fault", "runs", "rows lost", "rows duplicated", "corrupt files", "tracebacks")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
