"""Two commands on one output root, through the CLI, with a real concurrent holder process:
a second apply (and gc, and check --repair) stops at once naming the holder; status, query,
report and export run beside it and read a consistent snapshot while the holder keeps adding
and compacting parts; a holder killed with SIGKILL leaves a lock the next apply takes over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_support import HOLDER_SCRIPT, PLANNED, applied, audit, cli, env

pytest.importorskip("torch")


def _hold(output: Path, churn: bool = False) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, str(output), "churn" if churn else "idle"],
        stdout=subprocess.PIPE,
        text=True,
        env=env(),
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    proc.wait(timeout=30)


def test_a_second_apply_gc_and_repair_stop_at_once_naming_the_holder(tmp_path: Path) -> None:
    spec = applied(tmp_path / "run")
    output = spec.parent / "out"
    (spec.parent / "more.yaml").write_text(spec.read_text().replace("target: 6", "target: 8"))
    holder = _hold(output)
    try:
        for args in (["apply", spec.parent / "more.yaml", "-q"], ["gc", spec], ["check", spec, "--repair"]):
            t0 = time.monotonic()
            ran = cli(*args)
            assert ran.rc == 1 and not ran.traceback, ran.err
            assert "another apply is running" in ran.err, ran.err
            for detail in (f"pid {holder.pid}", socket.gethostname(), "run holder-run", "started 20"):
                assert detail in ran.err, (detail, ran.err)
            assert time.monotonic() - t0 < 60  # no waiting for the holder (the time is start-up)
        assert audit(output) == {"rows": PLANNED, "duplicated": 0, "corrupt": 0, "temp_files": 0}
    finally:
        _stop(holder)


def test_readers_beside_a_compacting_holder_see_a_consistent_catalog(tmp_path: Path) -> None:
    spec = applied(tmp_path / "run")
    output = spec.parent / "out"
    holder = _hold(output, churn=True)
    try:
        for round_ in range(2):
            q = cli(
                "query",
                "SELECT count(*) AS n, count(DISTINCT fingerprint) AS d FROM images",
                "--spec",
                spec,
                "--format",
                "json",
            )
            assert q.rc == 0, q.err
            assert json.loads(q.out) == [{"n": PLANNED, "d": PLANNED}]
            st = cli("status", spec, "--json")
            assert st.rc == 0, st.err
            assert sum(r["done"] for r in json.loads(st.out)["classes"]) == PLANNED
            ex = cli("export", spec, tmp_path / f"export{round_}", "--json")
            assert ex.rc == 0, ex.err
            assert json.loads(ex.out)["total"] == PLANNED
            assert len(list((tmp_path / f"export{round_}").rglob("*.png"))) == PLANNED
            rep = cli("report", spec, "--out", tmp_path / "report.html")
            assert rep.rc == 0, rep.err
        assert len(list((output / "catalog" / "images").glob("*.parquet"))) > 1  # the holder did churn
    finally:
        _stop(holder)
    # The holder was killed, perhaps mid-write: its temp part is the next apply's to clean up,
    # and that apply must find nothing to make.
    again = cli("apply", spec, "-q", "--json")
    assert again.rc == 0, again.err
    assert json.loads(again.out)["made"] == 0
    assert audit(output) == {"rows": PLANNED, "duplicated": 0, "corrupt": 0, "temp_files": 0}


def test_a_sigkilled_holder_leaves_a_stale_lock_the_next_apply_takes_over(tmp_path: Path) -> None:
    spec = applied(tmp_path / "run")
    output = spec.parent / "out"
    holder = _hold(output)
    _stop(holder, signal.SIGKILL)
    assert "holder-run" in (output / ".diffspec.lock").read_text()  # its record is left behind
    (spec.parent / "more.yaml").write_text(spec.read_text().replace("target: 6", "target: 7"))
    ran = cli("apply", spec.parent / "more.yaml", "-q", "--json")
    assert ran.rc == 0, ran.err
    result = json.loads(ran.out)
    assert result["made"] == 2
    assert any("did not end cleanly" in json.dumps(line) for line in result["log"]), result["log"]
    assert (output / ".diffspec.lock").read_text() == ""  # released at the end
    assert audit(output) == {"rows": PLANNED + 2, "duplicated": 0, "corrupt": 0, "temp_files": 0}
