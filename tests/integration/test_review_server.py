"""The review server without a browser: the token guards every request, no request names a
file, a decision the server answered survives `kill -9` of the CLI process, undo walks back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

try:
    from review_support import applied_copy, call
    from tiny_stage_models import *  # noqa: F403
except ImportError:  # pragma: no cover - run from the repository root
    from tests.integration.review_support import applied_copy, call
    from tests.integration.tiny_stage_models import *  # noqa: F403

from diffspec.catalog.records import ImageRecord
from diffspec.catalog.verdicts import decision_histories, verdicts
from diffspec.errors import ReviewError
from diffspec.project import Project

pytest.importorskip("torch")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def spec(tmp_path: Path, tiny_dino: Path, tiny_sam: Path) -> Path:  # noqa: F811
    return applied_copy(tmp_path, tiny_dino, tiny_sam)


def _base(url: str) -> str:
    return url.split("/?token=")[0]


def test_every_request_without_the_token_is_403_and_a_post_needs_the_header(spec: Path) -> None:
    with Project(spec).review() as server:
        base, token = _base(server.url), server.token
        fp = Project(spec).catalog.live_images(["fingerprint"]).column("fingerprint")[0].as_py()
        for path in ("/", "/?token=wrong", "/static/review.js", "/api/session", f"/api/images/{fp}/file"):
            status, body = call(base + path)
            assert status == 403, path
            assert b"PNG" not in body and b"use strict" not in body
        assert call(base + "/api/session", token="not-it")[0] == 403
        # The page with its token, then the API with the header or the cookie the page set.
        assert call(server.url)[0] == 200
        assert call(base + "/api/session", cookie=token)[0] == 200
        status, body = call(base + f"/api/images/{fp}/file", cookie=token)
        assert status == 200 and body.startswith(b"\x89PNG")
        # A decision with only the cookie (what a cross-site form could send) is refused.
        decision = {"fingerprint": fp, "decision": "reject"}
        assert call(base + "/api/decisions", cookie=token, body=decision)[0] == 403
        assert decision_histories(Project(spec).catalog) == {}
        status, body = call(base + "/api/decisions", token=token, body={"fingerprint": fp, "decision": "burn"})
        assert status == 400 and b"accept, reject, clear or undo" in body


def test_no_request_reaches_a_file_the_catalog_does_not_hold_under_the_output_root(spec: Path) -> None:
    project = Project(spec)
    secret = spec.parent / "secret.txt"
    secret.write_text("not for the page")
    # A catalog row whose path leaves the output root (a damaged or hostile catalog).
    row = project.catalog.live_images().to_pylist()[0]
    escaped = {**row, "fingerprint": "e" * 64, "path": "../secret.txt", "classes": tuple(row["classes"] or ())}
    project.catalog.append_images([ImageRecord(**escaped)], "hostile")
    with project.review() as server:
        base, token = _base(server.url), server.token
        assert call(base + f"/api/images/{'e' * 64}", token=token)[0] == 200  # a live row, but its file is outside
        for path in (
            "/api/images/../../secret.txt/file",
            "/api/images/..%2F..%2Fsecret.txt/file",
            "/api/images/%2e%2e/secret.txt",
            "/static/../../secret.txt",
            "/static/..%2Fserver.py",
            f"/api/images/{'e' * 64}/file",
            "/api/images/" + "e" * 64 + "/masks.png",
        ):
            status, body = call(base + path, token=token)
            assert status == 404, path
            assert b"not for the page" not in body and b"import" not in body


def _decide(base: str, token: str, fp: str, decision: str) -> dict:
    status, body = call(base + "/api/decisions", token=token, body={"fingerprint": fp, "decision": decision})
    assert status == 200, body
    return json.loads(body)


def test_an_answered_decision_survives_kill_9_of_the_cli_and_undo_walks_back(spec: Path) -> None:
    fps = Project(spec).catalog.live_images(["fingerprint"]).column("fingerprint").to_pylist()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), COLUMNS="400")
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffspec.cli", "review", str(spec), "--no-open"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("review: http://127.0.0.1:"), line + proc.stderr.read()  # type: ignore[union-attr]
        url = line.split()[1]
        base, token = _base(url), url.split("token=")[1]
        assert _decide(base, token, fps[0], "reject")["saved"]
        answered = _decide(base, token, fps[1], "accept")
        assert answered["image"]["state"] == "accepted" and answered["counts"]["decided"] >= 1
    finally:
        proc.send_signal(signal.SIGKILL)  # no flush, no clean-up: only what was answered counts
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    catalog = Project(spec).catalog
    states = verdicts(catalog)
    assert states[fps[0]].state == "rejected" and states[fps[0]].by == "review"
    assert states[fps[1]].state == "accepted"

    # A new server picks the history up: undo walks back to the decision before, then to none.
    with Project(spec).review() as server:
        base, token = _base(server.url), server.token
        assert _decide(base, token, fps[0], "accept")["image"]["history"] == ["reject", "accept"]
        undone = _decide(base, token, fps[0], "undo")
        assert undone["decision"] == "reject" and undone["image"]["state"] == "rejected"
        undone = _decide(base, token, fps[0], "undo")
        assert undone["decision"] == "clear" and undone["image"]["by"] != "review"
        assert _decide(base, token, fps[0], "undo")["saved"] is False  # nothing left to undo
        cls = answered["image"]["class_name"]
        listed = json.loads(call(base + f"/api/images?class={cls}&filter=accepted", token=token)[1])["images"]
        assert fps[1] in [i["fingerprint"] for i in listed] and fps[0] not in [i["fingerprint"] for i in listed]
    assert decision_histories(catalog)[fps[0]] == ["reject", "accept", "reject", "clear"]


def test_many_concurrent_decisions_are_grouped_into_few_parts_and_all_durable(spec: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    project = Project(spec)
    fps = project.catalog.live_images(["fingerprint"]).column("fingerprint").to_pylist()
    with project.review() as server:
        base, token = _base(server.url), server.token
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: _decide(base, token, fps[i % len(fps)], "reject"), range(48)))
        assert all(a["saved"] for a in answers)
        written = server.log.parts_written
    assert written < 48  # decisions that arrived while a part was being written shared the next one
    rows = project.catalog.read_table("review")
    assert rows.num_rows == 48 and set(pa.compute.unique(rows.column("session_id")).to_pylist()) == {server.session_id}
    assert len(project.catalog.parts("review")) == 1


def test_review_of_an_empty_catalog_says_what_to_do(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "version: 1\ndataset: d\noutput: out\nmodels: {m: {source: 'builtin:digits'}}\n"
        "defaults: {model: m}\nclasses: {zero: {target: 1, prompt: a zero}}\n"
    )
    with pytest.raises(ReviewError, match="diffspec apply"):
        Project(spec).review()
    result = subprocess.run(
        [sys.executable, "-m", "diffspec.cli", "review", str(spec), "--no-open"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=60,
    )
    assert result.returncode == 1 and "nothing to review" in result.stderr and "Traceback" not in result.stderr


def test_stop_answers_what_was_taken_and_refuses_later_decisions(spec: Path) -> None:
    project = Project(spec)
    fp = project.catalog.live_images(["fingerprint"]).column("fingerprint")[0].as_py()
    server = project.review().start()
    base, token = _base(server.url), server.token
    _decide(base, token, fp, "reject")
    server.stop()
    server.stop()  # twice is fine
    with pytest.raises(ReviewError, match="closed"):
        server.log.record(fp, "zero", "accept")
    assert decision_histories(project.catalog)[fp] == ["reject"]


def test_review_beside_a_running_apply_blocks_nothing_and_loses_nothing(spec: Path) -> None:
    import threading

    spec.write_text(spec.read_text().replace("zero: {target: 3,", "zero: {target: 5,"))
    project = Project(spec)
    fps = project.catalog.live_images(["fingerprint"]).column("fingerprint").to_pylist()
    answered: list[tuple[str, str]] = []
    done = threading.Event()
    with project.review() as server:
        base, token = _base(server.url), server.token

        def decide_all_along() -> None:
            i = 0
            while not done.is_set() or i < 4:
                fp, decision = fps[i % len(fps)], ("accept", "reject")[i % 2]
                if _decide(base, token, fp, decision)["saved"]:
                    answered.append((fp, decision))
                i += 1

        worker = threading.Thread(target=decide_all_along)
        worker.start()
        try:
            result = Project(spec).apply(progress=False)  # takes the output lock; the server holds none
        finally:
            done.set()
            worker.join(timeout=60)
        assert result.phase == "finished" and result.made == 2, result.log
        session = json.loads(call(base + "/api/session", token=token)[1])
        assert {c["name"]: c["total"] for c in session["classes"]}["zero"] == 5  # the new images are listed
    history = decision_histories(project.catalog)
    for fp in set(fp for fp, _ in answered):
        assert history[fp] == [d for f, d in answered if f == fp]
    assert len(answered) >= 4


def test_ctrl_c_stops_the_cli_cleanly_with_every_answered_decision_in_one_part(spec: Path) -> None:
    fps = Project(spec).catalog.live_images(["fingerprint"]).column("fingerprint").to_pylist()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), COLUMNS="400")
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffspec.cli", "review", str(spec), "--no-open"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    url = proc.stdout.readline().split()[1]  # type: ignore[union-attr]
    base, token = _base(url), url.split("token=")[1]
    for fp in fps[:3]:
        _decide(base, token, fp, "reject")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped: 3 decisions recorded in session" in out and "Traceback" not in err
    catalog = Project(spec).catalog
    assert len(catalog.parts("review")) == 1  # the session's parts merged on the way out
    assert all(verdicts(catalog)[fp].by == "review" for fp in fps[:3])
