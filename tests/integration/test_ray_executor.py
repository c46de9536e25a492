"""`apply --executor ray` on a real local Ray (num_cpus=2, no dashboard, no auth, its temp
folder a short one of this module's own), with the tiny real pipeline:

* the same plan through the in-process executor and through two Ray CPU actors gives the same
  fingerprints and the same image bytes at the same batch size, with the driver writing the
  files (default) and with the actors writing them (``budget.shared_storage``);
* an actor whose process dies mid-batch (``os._exit`` in a test-only backend) has its batches
  run again on a new actor: exactly the planned rows, no duplicates, every file its row's;
* a driver SIGKILLed through the CLI (``--executor ray --ray-address``) resumes like a local
  run, and Ctrl-C through the CLI stops cleanly and says how to resume;
* without Ray importable, ``--executor ray`` fails at plan time naming the extra;
* last (it replaces the module's Ray with a two-node ``ray.cluster_utils.Cluster``): a node
  removed mid-run is an actor lost.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import ray  # part of the test set-up: scripts/setup.sh installs the ray extra
from test_apply_support import check_catalog, tiny_sd, write_spec

from diffspec.catalog.store import Catalog
from diffspec.errors import PlanError
from diffspec.project import Project

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CLASSES = """
a: {target: 8, prompt: "a photo of a cat"}
b: {target: 4, prompt: "a photo of a {x}", vars: {x: [dog, bird]}}
"""


def _ray_env() -> dict[str, str]:
    """What the Ray processes (and CLI drivers) need: no auth, diffspec and ray_faults importable."""
    path = os.pathsep.join(
        [str(REPO), str(HERE)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    return {
        "RAY_AUTH_MODE": "disabled",
        "PYTHONPATH": path,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module (start-up costs seconds); shut down at the end."""
    tiny_sd()  # built before Ray starts, so its folder exists for the actors
    short = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # Unix socket paths: ~107 characters at most
    with pytest.MonkeyPatch.context() as mp:
        for name, value in _ray_env().items():
            mp.setenv(name, value)
        mp.setenv("TMPDIR", short)
        if ray.is_initialized():
            ray.shutdown()
        context = ray.init(
            num_cpus=2,
            include_dashboard=False,
            _temp_dir=os.path.join(short, "r"),
            log_to_driver=False,
            configure_logging=False,
        )
        try:
            yield context
        finally:
            ray.shutdown()
            shutil.rmtree(short, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, str]:
    """The plan's bytes from the in-process executor: fingerprint -> sha256."""
    import torch

    folder = tmp_path_factory.mktemp("reference")
    spec = write_spec(folder, CLASSES, max_batch=4, output="out-local")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = Project(spec).apply(progress=False)
    finally:
        torch.set_num_threads(threads)
    assert result.made == 12 and result.executor == "inprocess"
    return check_catalog(folder / "out-local", expected=12)


def _ray_apply(folder: Path, name: str, extra_budget: str = "", lane: bool = False, **options):
    """Actors only unless ``lane``: with the module's Ray already up the driver's lane would
    make the whole of this small plan before an actor is ready."""
    budget = ", ".join(b for b in (extra_budget, "" if lane else "driver_lane: false") if b)
    spec = write_spec(folder, CLASSES, max_batch=4, output=f"out-{name}", name=f"{name}.yaml", extra_budget=budget)
    project = Project(spec)
    plan = project.plan(executor="ray", workers=2)
    assert plan.execution.ray is not None and plan.execution.ray.actors == 2
    return project, project.apply(plan, progress=False, **options)


def test_ray_actors_make_the_same_bytes_as_the_local_executor(ray_session, reference, tmp_path: Path) -> None:
    project, result = _ray_apply(tmp_path, "ray")
    assert result.executor == "ray" and result.made == 12 and result.failed == 0, result
    assert check_catalog(project.output, expected=12) == reference, "Ray actors made other bytes than a local run"
    rows = Catalog(project.output).live_images(["batch_size"]).to_pylist()
    assert max(r["batch_size"] for r in rows) == 4
    assert len(Catalog(project.output).parts("images")) == 1  # one writer of rows: the driver
    # the log says where the time before the first image went: Ray, each actor's start, each load
    log = json.loads([r for r in Catalog(project.output).runs() if r["phase"] == "finished"][0]["log"])
    started = [e for e in log if e["event"] == "ray_start"]
    assert len(started) == 1 and started[0]["message"].startswith("used the Ray session already running"), started
    ready = sorted(e["worker"] for e in log if e["event"] == "worker_ready" and e["seconds"] > 0)
    assert ready == [0, 1], log
    assert not [e for e in log if e["event"] == "driver_lane"], "driver_lane: false still ran the lane"
    assert [e["seconds"] > 0 for e in log if e["event"] == "load"] == [True, True], log

    shared, result = _ray_apply(tmp_path, "shared", extra_budget="shared_storage: true")
    assert result.made == 12 and result.failed == 0, result
    assert shared.plan(executor="ray", workers=2).execution.ray.shared_storage
    assert check_catalog(shared.output, expected=12) == reference, "actors writing the files made other bytes"
    # a second apply of either makes nothing
    assert Project(project.spec_path).plan(executor="ray", workers=2).total_create == 0


def test_the_driver_lane_makes_the_same_bytes_and_hands_over_to_the_actors(
    ray_session, reference, tmp_path: Path
) -> None:
    """The driver generates while the actors start, from the same batches: the same bytes."""
    project, result = _ray_apply(tmp_path, "lane", lane=True)
    assert result.executor == "ray" and result.made == 12 and result.failed == 0, result
    assert check_catalog(project.output, expected=12) == reference, "the driver's lane made other bytes"
    log = json.loads([r for r in Catalog(project.output).runs() if r["phase"] == "finished"][0]["log"])
    retired = [e for e in log if e["event"] == "driver_lane" and "batches" in e]
    assert len(retired) == 1 and 1 <= retired[0]["batches"] <= 3, log
    loads = [e["worker"] for e in log if e["event"] == "load"]
    assert retired[0]["worker"] in loads, log  # the lane loaded its own pipeline in the driver
    assert "the driver generates until the actors do" in project.plan(executor="ray").execution.ray.describe()


def test_a_dead_actor_has_its_batches_run_again_on_a_new_actor(ray_session, reference, tmp_path: Path) -> None:
    from ray_faults import ExitsInAnActorOnce

    marker = tmp_path / "died-once"
    factory = functools.partial(ExitsInAnActorOnce, marker=str(marker), driver_pid=os.getpid())
    project, result = _ray_apply(tmp_path, "killed", backend_factory=factory)
    assert marker.exists(), "no actor ran the dying backend"
    assert result.made == 12 and result.failed == 0, result
    events = [
        e["event"]
        for e in json.loads([r for r in Catalog(project.output).runs() if r["phase"] == "finished"][0]["log"])
    ]
    assert "worker_died" in events and "requeue" in events and "worker_restart" in events, events
    assert check_catalog(project.output, expected=12) == reference, "the requeued batch made other bytes"


def _cli(args: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "diffspec.cli", *args],
        cwd=str(REPO),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _rows(output: Path) -> int:
    try:
        return len(Catalog(output).live_images(["fingerprint"]))
    except Exception:
        return 0


def test_cli_driver_killed_resumes_and_ctrl_c_stops_cleanly(ray_session, tmp_path: Path) -> None:
    address = ray_session.address_info["address"]
    spec = write_spec(
        tmp_path,
        """
        a: {target: 20, prompt: "a photo of a cat"}
        b: {target: 12, prompt: "a photo of a dog"}
        """,
        max_batch=2,
        output="out",
    )
    output = tmp_path / "out"
    counter = tmp_path / "writes.txt"
    env = {**os.environ, **_ray_env(), "DIFFSPEC_WRITE_COUNTER": str(counter)}
    args = ["apply", str(spec), "--executor", "ray", "--ray-address", address, "--workers", "2", "-q"]

    # SIGKILL the driver once a few images are written: the next apply makes only the rest
    driver = _cli(args, env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and driver.poll() is None:
        if counter.exists() and len(counter.read_text().split()) >= 6:
            break
        time.sleep(0.05)
    killed = driver.poll() is None
    driver.kill()
    driver.communicate()
    assert killed, "the driver finished before it could be killed"
    before = _rows(output)
    assert before < 32

    # Ctrl-C: batches in flight finish, the run is recorded as interrupted, the summary says how to resume
    driver = _cli(args, env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and driver.poll() is None and _rows(output) <= before:
        time.sleep(0.05)
    driver.send_signal(signal.SIGINT)
    stdout, stderr = driver.communicate(timeout=120)
    if driver.returncode == 130:
        assert "resume with" in stdout, stdout
        phases = sorted((r["started_at"], r["phase"] != "started", r["phase"]) for r in Catalog(output).runs())
        assert phases[-1][2] == "interrupted", phases
    else:  # the stop came after the last batch
        assert driver.returncode == 0, stderr
    check_catalog(output)

    # and the rest, to the end
    driver = _cli(args + ["--json"], env)
    stdout, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["failed"] == 0 and summary["remaining"] == 0
    check_catalog(output, expected=32)


def test_without_ray_the_ray_executor_fails_at_plan_time_naming_the_extra(tmp_path: Path, monkeypatch) -> None:
    spec = write_spec(tmp_path, CLASSES)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(PlanError, match=r"pip install 'diffspec\[ray\]'"):
        Project(spec).plan(executor="ray")
    with pytest.raises(PlanError, match=r"pip install 'diffspec\[ray\]'"):
        Project(spec).plan(ray_address="head:6379")
    from typer.testing import CliRunner

    from diffspec.cli import app

    result = CliRunner().invoke(app, ["plan", str(spec), "--executor", "ray"])
    assert result.exit_code == 1
    assert "diffspec[ray]" in result.output and "Traceback" not in result.output


def test_plan_shows_the_ray_executor_and_its_actors(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, CLASSES, extra_budget="workers: 3")
    plan = Project(spec).plan(executor="ray", ray_address="10.0.0.1:6379")
    assert plan.execution.executor == "ray" and plan.execution.devices == ("cpu",) * 3
    assert plan.execution.ray.address == "10.0.0.1:6379" and plan.execution.ray.actors == 3
    assert "3 Ray actors on the Ray cluster at 10.0.0.1:6379" in plan.execution.describe()
    from typer.testing import CliRunner

    from diffspec.cli import app

    result = CliRunner().invoke(app, ["plan", str(spec), "--executor", "ray"])
    assert result.exit_code == 0, result.output
    assert "ray, 3 Ray actors on a local Ray started for the run" in " ".join(result.output.split())
    gpu = write_spec(tmp_path, CLASSES, name="gpu.yaml", extra_budget="gpus_per_actor: 0.5, vram_gb: 8").read_text()
    (tmp_path / "gpu.yaml").write_text(gpu.replace("devices: cpu", "devices: [0, 1]"))
    execution = Project(tmp_path / "gpu.yaml").plan(executor="ray").execution
    assert execution.devices == ("cuda:0", "cuda:0", "cuda:1", "cuda:1") and execution.ray.actors == 4
    assert execution.memory_gb == pytest.approx(4.0)  # two actors share each GPU's memory


def test_a_node_lost_mid_run_is_an_actor_lost(tmp_path: Path) -> None:
    """Two Ray nodes on this machine (1 CPU each); the node without the driver's head is
    removed once the run is under way. Runs last: it replaces the module's Ray session."""
    from ray.cluster_utils import Cluster
    from ray_faults import Slow

    if ray.is_initialized():
        ray.shutdown()
    short = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    saved = dict(os.environ)
    os.environ.update(_ray_env())
    os.environ["TMPDIR"] = short
    os.makedirs(os.path.join(short, "ray"), exist_ok=True)  # Ray's per-machine files go there
    cluster = None
    try:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "include_dashboard": False, "temp_dir": os.path.join(short, "r")},
        )
        worker = cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        cluster.wait_for_nodes()
        spec = write_spec(tmp_path, CLASSES, max_batch=2, output="out", extra_budget="driver_lane: false")
        project = Project(spec)
        plan = project.plan(executor="ray", workers=2)
        output = tmp_path / "out"

        def remove_when_under_way() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and _rows(output) < 2:
                time.sleep(0.05)
            cluster.remove_node(worker, allow_graceful=False)

        remover = threading.Thread(target=remove_when_under_way, daemon=True)
        remover.start()
        result = project.apply(plan, progress=False, backend_factory=functools.partial(Slow, pause=0.6))
        remover.join(timeout=60)
        assert result.made == 12 and result.failed == 0, result
        assert any("died" in line for line in result.log), result.log
        check_catalog(output, expected=12)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(short, ignore_errors=True)
