"""The plan is the contract: `apply` runs the executor, devices, memory strategy and batch size
the plan decided (and a saved plan file recorded), checks the machine against them before any
work, and re-plans visibly only where the spec left the choice to the machine.

There is no GPU on this machine. The GPU cases fake two things and say so: the machine probe
(a `Machine` with a CUDA GPU, passed to `build_plan` / `apply`) and the backend (a test-only
class that makes flat images without CUDA and records the batch sizes and strategy it was
given). Everything else (plan, batches, executor, writer, catalog) is real.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from test_apply_support import check_catalog, one_torch_thread, write_spec  # noqa: F401
from typer.testing import CliRunner

from diffspec.catalog.store import Catalog
from diffspec.cli import app
from diffspec.errors import PlanError
from diffspec.generate.backend import GeneratedImage
from diffspec.machine import Gpu, Machine
from diffspec.plan.planfile import load_plan, save_plan
from diffspec.project import Project

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU_ONLY = Machine((), 24.0, 2, "test: no GPU")
ONE_GPU_24 = Machine((Gpu(0, "Fake A10G", 24.0),), 24.0, 2, "test: faked GPU")
ONE_GPU_8 = Machine((Gpu(0, "Fake T4", 8.0),), 24.0, 2, "test: faked GPU")


class RecordingBackend:
    """Test-only stand-in for a GPU pipeline: flat images, no CUDA. Records every call."""

    calls: list[tuple[str, str, int]] = []  # (device, strategy, batch size)

    def __init__(self, key, device="cpu", strategy="none", dtype=None) -> None:
        self.device, self.strategy, self.dtype = device, strategy, "float16"

    def generate(self, units):
        RecordingBackend.calls.append((self.device, self.strategy, len(units)))
        return [
            GeneratedImage(u.fingerprint, Image.new("RGB", (u.key.width, u.key.height), (u.seed % 256, 0, 0)), 0.01)
            for u in units
        ]

    def scheduler_config(self, key):
        return {"_class_name": "FakeScheduler"}

    def set_strategy(self, strategy):
        self.strategy = strategy

    def close(self):
        pass


def _runs_log(output: Path, run_id: str) -> list[dict]:
    row = next(r for r in Catalog(output).runs() if r["run_id"] == run_id and r["phase"] != "started")
    return json.loads(row["log"])


def test_a_cpu_run_uses_the_batch_size_and_strategy_of_the_plan(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, 'a: {target: 10, prompt: "a photo of a cat"}', max_batch=4)
    project = Project(spec)
    plan = project.plan()
    decision = next(iter(plan.execution.groups.values())).memory
    assert (plan.execution.executor, plan.execution.devices) == ("inprocess", ("cpu",))
    assert (decision.strategy, decision.batch_size) == ("none", 4)
    result = project.apply(plan, progress=False)
    assert result.made == 10 and result.executor == "inprocess" and result.replanned == ()
    sizes = Catalog(project.output).live_images(["batch_size"]).column("batch_size").to_pylist()
    assert sorted(sizes) == [2, 2, 4, 4, 4, 4, 4, 4, 4, 4]  # batches of 4, 4 and the last 2
    execution = next(e for e in _runs_log(project.output, result.run_id) if e["event"] == "execution")
    assert list(execution["groups"].values()) == [{"strategy": "none", "batch_size": 4}]
    check_catalog(project.output, expected=10)


def test_a_gpu_plan_runs_with_its_strategy_and_batch_size(tmp_path: Path) -> None:
    """GPU faked: the machine probe says one 24 GB CUDA GPU, the backend makes flat images."""
    spec = write_spec(
        tmp_path,
        'a: {target: 9, prompt: "a photo of a cat"}',
        max_batch=8,
        extra_budget="vram_gb: 0.02, strategy: attention_slicing",
    )
    spec.write_text(spec.read_text().replace("devices: cpu", "devices: [0]"))
    project = Project(spec)
    plan = project.plan()  # vram_gb given: no probe needed for the memory figure
    decision = next(iter(plan.execution.groups.values())).memory
    assert plan.execution.device_kind == "cuda" and plan.execution.devices == ("cuda:0",)
    # The small budget, not max_batch, sets the batch size.
    assert decision.device == "cuda" and decision.fits and decision.strategy == "attention_slicing"
    assert 1 < decision.batch_size < 8
    RecordingBackend.calls = []
    result = project.apply(plan, progress=False, backend_factory=RecordingBackend, machine=ONE_GPU_24, stages=False)
    assert result.made == 9 and result.replanned == () and result.devices == ("cuda:0",)
    sizes = [n for _, _, n in RecordingBackend.calls]
    assert {(d, s) for d, s, _ in RecordingBackend.calls} == {("cuda:0", "attention_slicing")}
    assert max(sizes) == decision.batch_size and sum(sizes) == 9
    assert len(sizes) == -(-9 // decision.batch_size)
    recorded = Catalog(project.output).live_images(["batch_size"]).column("batch_size").to_pylist()
    assert max(recorded) == decision.batch_size


def test_a_saved_gpu_plan_refuses_clearly_on_a_cpu_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write_spec(tmp_path, 'a: {target: 3, prompt: "a photo of a cat"}', extra_budget="vram_gb: 16")
    spec.write_text(spec.read_text().replace("devices: cpu", "devices: [0]"))
    monkeypatch.chdir(tmp_path)
    project = Project(spec)
    save_plan(project.plan(), tmp_path / "plan.json")
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved["execution"]["device_kind"] == "cuda" and saved["execution"]["devices"] == ["cuda:0"]
    loaded = load_plan(tmp_path / "plan.json")  # decisions come from the file, not this machine
    assert loaded.execution.device_kind == "cuda"
    with pytest.raises(PlanError, match="runs on CUDA GPUs .* this machine has none"):
        project.apply(loaded, progress=False, machine=CPU_ONLY)
    assert not (project.output / "images").exists()  # refused before any work
    result = CliRunner().invoke(app, ["apply", str(tmp_path / "plan.json"), "-q"])
    assert result.exit_code == 1 and "does not match the plan" in result.output and "Traceback" not in result.output


def test_a_gpu_smaller_than_the_budget_refuses(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, 'a: {target: 3, prompt: "a photo of a cat"}', extra_budget="vram_gb: 16")
    spec.write_text(spec.read_text().replace("devices: cpu", "devices: [0]"))
    project = Project(spec)
    with pytest.raises(PlanError, match="assumes 16 GB per GPU .* smallest GPU here has 8.0 GB"):
        project.apply(project.plan(), progress=False, machine=ONE_GPU_8, backend_factory=RecordingBackend)


def test_devices_auto_replans_visibly_for_the_machine_it_runs_on(tmp_path: Path) -> None:
    """A plan made for a GPU (auto, vram_gb) applied here on the CPU: decided again, and said."""
    spec = write_spec(tmp_path, 'a: {target: 5, prompt: "a photo of a cat"}', extra_budget="vram_gb: 16, ram_gb: 2")
    spec.write_text(spec.read_text().replace("devices: cpu", "devices: auto"))
    project = Project(spec)
    from diffspec.plan.diff import build_plan

    plan = build_plan(project.loaded, project.catalog, machine=CPU_ONLY)
    assert plan.execution.device_kind == "cuda"  # planned for the GPU box the spec names
    result = project.apply(plan, progress=False, machine=CPU_ONLY)
    assert result.made == 5 and result.devices == ("cpu",)
    assert result.replanned and "cuda:0" in result.replanned[0] and "cpu" in result.replanned[0]
    log = _runs_log(project.output, result.run_id)
    assert any(e["event"] == "replanned" for e in log)
    check_catalog(project.output, expected=5)


def test_executor_option_is_wired(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, 'a: {target: 4, prompt: "a photo of a cat"}', max_batch=2)
    runner = CliRunner()
    bad = runner.invoke(app, ["plan", str(spec), "--executor", "inprocess", "--workers", "2"])
    assert bad.exit_code == 1 and "inprocess executor runs one worker" in bad.output
    ray = runner.invoke(app, ["plan", str(spec), "--executor", "ray", "--workers", "2", "--json"])
    assert ray.exit_code == 0, ray.output  # run through Ray in tests/integration/test_ray_executor.py
    assert json.loads(ray.stdout)["execution"]["ray"] == {
        "address": None,
        "actors": 2,
        "gpus_per_actor": 0.0,
        "shared_storage": False,
        "driver_lane": True,  # a CPU plan on a local Ray: the driver generates while Ray starts
    }
    unknown = runner.invoke(app, ["apply", str(spec), "--executor", "threads", "-q"])
    assert unknown.exit_code == 1 and "unknown executor 'threads'" in unknown.output
    planned = runner.invoke(app, ["plan", str(spec), "--executor", "processes", "--json"])
    assert json.loads(planned.stdout)["execution"]["executor"] == "processes"
    ran = runner.invoke(app, ["apply", str(spec), "--executor", "processes", "-q", "--json"])
    assert ran.exit_code == 0, ran.output
    summary = json.loads(ran.stdout)
    assert summary["executor"] == "processes" and summary["made"] == 4
    runs = [r for r in Catalog(tmp_path / "out").runs() if r["phase"] == "finished"]
    assert [r["executor"] for r in runs] == ["processes"]
    check_catalog(tmp_path / "out", expected=4)


def test_a_plan_file_runs_as_planned_not_as_the_command_line_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_spec(tmp_path, 'a: {target: 2, prompt: "a photo of a cat"}')
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(app, ["plan", str(spec), "--out", "plan.json"]).exit_code == 0
    other = runner.invoke(app, ["apply", "plan.json", "--workers", "2", "-q"])
    assert other.exit_code == 1 and "the plan has 1 worker, not 2" in other.output


def test_process_executor_close_closes_every_workers_pipes(tmp_path: Path) -> None:
    from diffspec.run.executors.base import RunContext
    from diffspec.run.executors.processes import ProcessExecutor

    executor = ProcessExecutor(
        ["cpu", "cpu", "cpu"], RunContext(str(tmp_path), "r", "d", {}), lambda r: list(r), local_first=False
    )
    executor.start()
    executor.close()
    assert len(executor.workers) == 3
    assert all(w.tasks.closed and w.results.closed for w in executor.workers)
    assert not any(w.process.is_alive() for w in executor.workers)


def test_status_reports_the_last_runs_made_kept_and_time_per_image(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, 'a: {target: 3, prompt: "a photo of a cat"}')
    Project(spec).apply(progress=False)
    spec.write_text(spec.read_text().replace("target: 3", "target: 5"))
    Project(spec).apply(progress=False)
    report = Project(spec).status()
    assert report.last_run is not None and (report.last_run.made, report.last_run.kept) == (2, 3)
    (row,) = report.classes
    assert row.done == 5 and row.seconds_per_image is not None and row.seconds_per_image > 0
    text = CliRunner().invoke(app, ["status", str(spec)]).output
    assert "made 2, kept 3 already there" in text and "s/image" in text


def test_apply_says_what_the_stages_did_and_writes_the_report_the_spec_asks_for(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, 'a: {target: 3, prompt: "a photo of a cat"}')
    spec.write_text(spec.read_text() + "stages:\n  filters:\n    - sharpness: {min: 0.0}\n  review: {report: true}\n")
    result = CliRunner().invoke(app, ["apply", str(spec), "-q"])
    assert result.exit_code == 0, result.output
    assert "filter sharpness: checked 3, rejected 0" in result.output
    assert "report: " in result.output and (tmp_path / "out" / "report.html").is_file()
