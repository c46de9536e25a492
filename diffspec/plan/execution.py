"""How a plan runs: the device kind, the workers, the executor and, per pipeline group, the
memory strategy and batch size. Decided once, here, at plan time; `apply` runs these decisions.

The decisions are part of the plan (``plan --json`` and ``plan --out`` record them), so what a
user approves in CI is what runs. The plan also records the budget it was computed from, so
that `apply`, given only the plan, can compare it with the machine it runs on
(:func:`check_machine`) and, only where the spec left the choice to the machine
(``devices: auto``, or no memory figure in the budget), decide again and say what changed
(:func:`replan`). Run-time out-of-memory backoff (halve the batch, then a lighter strategy)
still happens in `apply` and is recorded in the run's log.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from diffspec.errors import PlanError
from diffspec.machine import GPU_USABLE_SHARE, RAM_USABLE_SHARE, Machine
from diffspec.plan.estimate import MemoryPlan, memory_plan
from diffspec.plan.unit import PipelineKey

#: Executors that can run a plan. "inprocess" runs one worker in the calling process;
#: "processes" starts one worker process per device; "ray" one Ray actor per GPU (or GPU
#: share) or per CPU worker, on a Ray cluster or a local Ray started for the run.
EXECUTORS = ("inprocess", "processes", "ray")
FUTURE_EXECUTORS: dict[str, str] = {}
RAY_EXTRA = "pip install 'diffspec[ray]'"


def group_id(key: PipelineKey) -> str:
    """A stable name for a pipeline group in a saved plan: what the group's units share."""
    text = key.canonical_group() + f"\n{key.model.params_b!r}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class BudgetInputs:
    """The spec's `budget` as the plan saw it: enough to decide again without the spec."""

    devices: str | tuple[int, ...]  # "auto", "cpu" or GPU indices
    vram_gb: float | None
    ram_gb: float | None
    max_batch: int
    strategy: str
    workers: int | None
    gpus_per_actor: float | None = None  # the Ray executor's GPU share per actor (None: a whole GPU)
    shared_storage: bool = False  # every Ray node mounts the output root: actors write the files
    tune_batch: bool = False  # workers measure smaller calls and keep the fastest batch size
    driver_lane: bool = True  # the Ray executor's driver generates while a local Ray starts

    @classmethod
    def from_budget(cls, budget: Any) -> BudgetInputs:
        devices = budget.devices if isinstance(budget.devices, str) else tuple(int(d) for d in budget.devices)
        share = getattr(budget, "gpus_per_actor", None)
        return cls(
            devices,
            budget.vram_gb,
            budget.ram_gb,
            int(budget.max_batch),
            str(budget.strategy),
            budget.workers,
            float(share) if share is not None else None,
            bool(getattr(budget, "shared_storage", False)),
            bool(getattr(budget, "tune_batch", False)),
            bool(getattr(budget, "driver_lane", True)),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "devices": self.devices if isinstance(self.devices, str) else list(self.devices),
            "vram_gb": self.vram_gb,
            "ram_gb": self.ram_gb,
            "max_batch": self.max_batch,
            "strategy": self.strategy,
            "workers": self.workers,
        }
        # Written only when set: plans (and plan files) that do not use Ray stay as they were.
        if self.gpus_per_actor is not None:
            out["gpus_per_actor"] = self.gpus_per_actor
        if self.shared_storage:
            out["shared_storage"] = True
        if self.tune_batch:
            out["tune_batch"] = True
        if not self.driver_lane:
            out["driver_lane"] = False
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BudgetInputs:
        devices = data["devices"]
        share = data.get("gpus_per_actor")
        return cls(
            devices if isinstance(devices, str) else tuple(int(d) for d in devices),
            data.get("vram_gb"),
            data.get("ram_gb"),
            int(data["max_batch"]),
            str(data["strategy"]),
            data.get("workers"),
            float(share) if share is not None else None,
            bool(data.get("shared_storage", False)),
            bool(data.get("tune_batch", False)),
            bool(data.get("driver_lane", True)),
        )


@dataclass(frozen=True, slots=True)
class RayPlan:
    """How the Ray executor runs a plan: where, how many actors, what each one reserves."""

    address: str | None  # a running cluster (``ray.init(address=...)``); None: a local Ray for the run
    actors: int  # one per entry of ``ExecutionPlan.devices``
    gpus_per_actor: float  # 0 on CPU plans
    shared_storage: bool  # actors write the image files (True) or send PNG bytes to the driver (False)
    driver_lane: bool = False  # the driver generates while Ray and its actors start (CPU, local Ray)

    def describe(self) -> str:
        where = f"the Ray cluster at {self.address}" if self.address else "a local Ray started for the run"
        share = f", {self.gpus_per_actor:g} GPU each" if self.gpus_per_actor else ""
        writes = "actors write the files (shared storage)" if self.shared_storage else "the driver writes the files"
        lane = "; the driver generates until the actors do" if self.driver_lane else ""
        return f"{self.actors} Ray actor{'s' if self.actors != 1 else ''}{share} on {where}; {writes}{lane}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "actors": self.actors,
            "gpus_per_actor": self.gpus_per_actor,
            "shared_storage": self.shared_storage,
            "driver_lane": self.driver_lane,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RayPlan:
        address = data.get("address")
        return cls(
            str(address) if address else None,
            int(data["actors"]),
            float(data["gpus_per_actor"]),
            bool(data["shared_storage"]),
            bool(data.get("driver_lane", False)),
        )


@dataclass(frozen=True, slots=True)
class GroupDecision:
    """Memory strategy and batch size for the units of one pipeline group."""

    group: str
    model: str  # the model's name in the spec
    source: str
    memory: MemoryPlan

    def to_dict(self) -> dict[str, Any]:
        m = self.memory
        return {
            "group": self.group,
            "model": self.model,
            "source": self.source,
            "device": m.device,
            "strategy": m.strategy,
            "batch_size": m.batch_size,
            "fits": m.fits,
            "budget_gb": round(m.budget_gb, 3),
            "weights_gb": round(m.weights_gb, 4),
            "per_image_gb": round(m.per_image_gb, 6),
            "parameters_from": m.source,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GroupDecision:
        memory = MemoryPlan(
            str(data["device"]),
            float(data["budget_gb"]),
            float(data["weights_gb"]),
            float(data["per_image_gb"]),
            str(data["strategy"]),
            int(data["batch_size"]),
            bool(data["fits"]),
            str(data["parameters_from"]),
        )
        return cls(str(data["group"]), str(data["model"]), str(data["source"]), memory)


@dataclass(frozen=True, eq=False)
class ExecutionPlan:
    device_kind: str  # "cuda" or "cpu"
    devices: tuple[str, ...]  # one entry per worker: "cuda:0", "cuda:1" or "cpu", "cpu"
    executor: str
    memory_gb: float  # the per-worker memory the batch sizes were computed for
    memory_from: str  # where that figure came from
    planned_on: str  # the machine the plan was made on, described
    budget: BudgetInputs
    groups: Mapping[str, GroupDecision] = field(repr=False)
    ray: RayPlan | None = None  # the Ray executor's decisions (only with executor "ray")

    @property
    def workers(self) -> int:
        return len(self.devices)

    def decision(self, key: PipelineKey) -> MemoryPlan:
        gid = group_id(key)
        found = self.groups.get(gid)
        if found is None:
            raise PlanError(
                f"the plan has no execution decision for the units of model {key.model.name!r} "
                f"(group {gid}); run `diffspec plan` again"
            )
        return found.memory

    def strategy_for(self, key: PipelineKey) -> str:
        chosen = self.decision(key).strategy
        return chosen if chosen != "auto" else "none"

    def describe(self) -> str:
        where = ", ".join(sorted(set(self.devices)))
        if self.ray is not None:
            per = "actor"
            return (
                f"{self.executor}, {self.ray.describe()}; devices {where}, "
                f"{self.memory_gb:.1f} GB per {per} ({self.memory_from})"
            )
        per = "GPU" if self.device_kind == "cuda" else "worker"
        tuned = "; batch sizes tuned from measured throughput" if self.budget.tune_batch else ""
        return (
            f"{self.executor}, {self.workers} worker{'s' if self.workers != 1 else ''} on {where}, "
            f"{self.memory_gb:.1f} GB per {per} ({self.memory_from}){tuned}"
        )

    def to_dict(self) -> dict[str, Any]:
        out = {
            "executor": self.executor,
            "device_kind": self.device_kind,
            "devices": list(self.devices),
            "workers": self.workers,
            "memory_gb": round(self.memory_gb, 3),
            "memory_from": self.memory_from,
            "planned_on": self.planned_on,
            "budget": self.budget.to_dict(),
            "groups": [g.to_dict() for g in sorted(self.groups.values(), key=lambda g: (g.model, g.group))],
        }
        if self.ray is not None:
            out["ray"] = self.ray.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExecutionPlan:
        try:
            groups = {g["group"]: GroupDecision.from_dict(g) for g in data["groups"]}
            ray = RayPlan.from_dict(data["ray"]) if data.get("ray") is not None else None
            if str(data["executor"]) == "ray" and ray is None:
                raise KeyError("ray")
            return cls(
                str(data["device_kind"]),
                tuple(data["devices"]),
                str(data["executor"]),
                float(data["memory_gb"]),
                str(data["memory_from"]),
                str(data["planned_on"]),
                BudgetInputs.from_dict(data["budget"]),
                groups,
                ray,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(
                f"the plan file's execution section is damaged ({type(exc).__name__}: {exc}); "
                "run `diffspec plan --out` again"
            ) from None


def _devices(
    budget: BudgetInputs, machine: Machine, workers: int | None, decide_here: bool = False
) -> tuple[str, tuple[str, ...], float, str]:
    """(device kind, one device per worker, memory per worker in GB, where that figure came from).

    At plan time a VRAM budget with ``devices: auto`` plans for GPUs even on a machine without
    one (CI plans for the GPU box); ``decide_here`` (apply re-planning) goes by this machine."""
    requested = budget.devices
    if requested == "cpu":
        cuda = False
    elif isinstance(requested, tuple):
        cuda = True
    else:  # auto: the GPUs this machine has; a VRAM budget says the spec is meant for GPUs
        cuda = machine.has_gpu or (budget.vram_gb is not None and not decide_here)
    if cuda:
        indices = requested if isinstance(requested, tuple) else None
        if budget.vram_gb is not None:
            memory, source = float(budget.vram_gb), "budget.vram_gb"
        else:
            measured = machine.gpu_memory_gb(indices)
            if measured is None:
                raise PlanError(
                    "budget.devices lists GPUs, this machine has none to measure and the budget gives "
                    "no `vram_gb`: set budget.vram_gb to the memory of the GPUs the run will use"
                )
            memory, source = measured * GPU_USABLE_SHARE, f"{GPU_USABLE_SHARE:.0%} of the GPU ({machine.probe})"
        if indices is not None:
            devices = tuple(f"cuda:{i}" for i in indices)
        elif machine.has_gpu:
            devices = tuple(f"cuda:{g.index}" for g in machine.gpus)
        else:
            devices = ("cuda:0",)  # planned off a GPU machine: apply takes every GPU it finds
        return "cuda", devices, memory, source
    count = max(1, int(workers or budget.workers or 1))
    if budget.ram_gb is not None:
        total, source = float(budget.ram_gb), "budget.ram_gb"
    else:
        total, source = machine.ram_gb * RAM_USABLE_SHARE, f"{RAM_USABLE_SHARE:.0%} of this machine's RAM"
    # Each CPU worker process holds its own copy of the pipeline: the budget is shared.
    return "cpu", ("cpu",) * count, total / count, source + (f", split over {count} workers" if count > 1 else "")


def ray_available() -> bool:
    """Whether Ray can be imported here, without importing it (plan stays light)."""
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        return False


def choose_executor(requested: str | None, workers: int, ray_address: str | None = None) -> str:
    if ray_address and requested in (None, "", "auto"):
        requested = "ray"  # an address says where to run
    if ray_address and requested != "ray":
        raise PlanError(
            f"--ray-address is for the ray executor, and the plan asks for --executor {requested}; "
            "leave out one of the two"
        )
    if requested in (None, "", "auto"):
        return "inprocess" if workers == 1 else "processes"
    if requested in FUTURE_EXECUTORS:
        raise PlanError(FUTURE_EXECUTORS[requested])
    if requested not in EXECUTORS:
        raise PlanError(f"unknown executor {requested!r}; expected one of: auto, {', '.join(EXECUTORS)}")
    if requested == "ray" and not ray_available():
        raise PlanError(f"--executor ray needs Ray, which is not installed here: {RAY_EXTRA}")
    if requested == "inprocess" and workers > 1:
        raise PlanError(
            f"the inprocess executor runs one worker and the plan has {workers} "
            "(budget.workers or --workers, or one per GPU); use --executor processes or --workers 1"
        )
    return requested


def ray_actors(
    budget: BudgetInputs, kind: str, devices: tuple[str, ...], memory: float, source: str, address: str | None
) -> tuple[tuple[str, ...], float, str, RayPlan]:
    """The Ray executor's actors: one per GPU, or ``1 / gpus_per_actor`` per GPU sharing its
    memory; on the CPU one per planned worker. Returns (one device per actor, memory per actor,
    where that figure came from, the Ray decisions)."""
    share = 0.0
    if kind == "cuda":
        share = float(budget.gpus_per_actor or 1.0)
        per_gpu = max(1, int(1.0 / share + 1e-9))
        if per_gpu > 1:
            devices = tuple(d for d in devices for _ in range(per_gpu))
            memory, source = memory * share, source + f", {share:g} of it per actor (budget.gpus_per_actor)"
    # The lane needs the driver to be a CPU worker of the cluster: true of a local Ray, unknown of
    # one at an address (the driver may be a laptop), never of a GPU plan.
    lane = budget.driver_lane and kind != "cuda" and not address
    return devices, memory, source, RayPlan(address or None, len(devices), share, budget.shared_storage, lane)


def plan_execution(
    budget: BudgetInputs,
    keys: Iterable[PipelineKey],
    machine: Machine,
    *,
    executor: str | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
) -> ExecutionPlan:
    kind, devices, memory, source = _devices(budget, machine, workers)
    chosen = choose_executor(executor, len(devices), ray_address)
    ray: RayPlan | None = None
    if chosen == "ray":
        devices, memory, source, ray = ray_actors(budget, kind, devices, memory, source, ray_address)
    groups: dict[str, GroupDecision] = {}
    for key in keys:
        gid = group_id(key)
        if gid not in groups:
            decision = memory_plan(key, kind, memory, budget.max_batch, budget.strategy)
            groups[gid] = GroupDecision(gid, key.model.name, key.model.source, decision)
    return ExecutionPlan(kind, devices, chosen, memory, source, machine.describe(), budget, groups, ray)


@dataclass(frozen=True, slots=True)
class Mismatch:
    kind: str  # device_kind | missing_gpu | memory
    message: str


def check_machine(execution: ExecutionPlan, machine: Machine) -> list[Mismatch]:
    """How this machine differs from what the plan assumed; empty if it matches."""
    budget = execution.budget
    if execution.device_kind == "cuda":
        if not machine.has_gpu:
            return [
                Mismatch(
                    "device_kind",
                    f"the plan runs on CUDA GPUs ({', '.join(execution.devices)}) and this "
                    f"machine has none ({machine.describe()})",
                )
            ]
        indices = budget.devices if isinstance(budget.devices, tuple) else None
        if indices is not None:
            present = {g.index for g in machine.gpus}
            missing = [i for i in indices if i not in present]
            if missing:
                return [
                    Mismatch(
                        "missing_gpu",
                        f"the plan uses GPU {', '.join(map(str, missing))} (budget.devices) and "
                        f"this machine has {len(machine.gpus)} GPU{'s' if len(machine.gpus) != 1 else ''}",
                    )
                ]
        have = machine.gpu_memory_gb(indices) or 0.0
        per_gpu = execution.memory_gb / (
            execution.ray.gpus_per_actor if execution.ray and execution.ray.gpus_per_actor else 1.0
        )
        if execution.memory_from.startswith("budget."):
            if have + 1e-6 < per_gpu:
                return [
                    Mismatch(
                        "memory",
                        f"the plan assumes {per_gpu:g} GB per GPU ({execution.memory_from}) "
                        f"and the smallest GPU here has {have:.1f} GB",
                    )
                ]
        elif abs(have * GPU_USABLE_SHARE - per_gpu) > 0.05 * per_gpu:
            return [
                Mismatch(
                    "memory",
                    f"the plan was made for GPUs of {per_gpu / GPU_USABLE_SHARE:.1f} GB "
                    f"and the smallest GPU here has {have:.1f} GB",
                )
            ]
        return []
    out: list[Mismatch] = []
    if machine.has_gpu and budget.devices == "auto":
        out.append(Mismatch("device_kind", f"the plan runs on the CPU and this machine has {machine.describe()}"))
    if not execution.memory_from.startswith("budget."):
        usable = machine.ram_gb * RAM_USABLE_SHARE
        planned = execution.memory_gb * execution.workers
        if abs(usable - planned) > 0.05 * planned:
            out.append(
                Mismatch(
                    "memory",
                    f"the plan was made for {planned:.1f} GB of usable RAM and this machine has {usable:.1f} GB",
                )
            )
    return out


@dataclass(frozen=True, slots=True)
class Replanned:
    execution: ExecutionPlan
    changes: tuple[str, ...]  # what differs from the saved decisions, in words


def _executor_for(previous: str, workers: int) -> str:
    return previous if previous != "inprocess" or workers == 1 else "processes"


def replan(execution: ExecutionPlan, keys: Iterable[PipelineKey], machine: Machine) -> Replanned:
    """The plan's execution on ``machine``: unchanged where it matches; decided again, with the
    changes in words, where the spec left the difference to the machine (``devices: auto`` for
    the device kind, no memory figure in the budget for the memory); a PlanError otherwise."""
    budget = execution.budget
    if execution.ray is not None and execution.ray.address:
        # The cluster runs the plan, not this machine: the executor checks the cluster's
        # resources for the planned actors when it starts.
        return Replanned(execution, ())
    mismatches = check_machine(execution, machine)
    if not mismatches:
        if execution.device_kind == "cuda" and budget.devices == "auto":
            found = tuple(f"cuda:{g.index}" for g in machine.gpus)
            if execution.ray is not None:
                share = execution.ray.gpus_per_actor or 1.0
                found = tuple(d for d in found for _ in range(max(1, int(1.0 / share + 1e-9))))
            if found != execution.devices:  # one worker per GPU found; batch sizes do not change
                moved_ray = replace(execution.ray, actors=len(found)) if execution.ray is not None else None
                moved = replace(
                    execution, devices=found, executor=_executor_for(execution.executor, len(found)), ray=moved_ray
                )
                return Replanned(
                    moved,
                    (
                        f"workers: {', '.join(execution.devices)} -> {', '.join(found)} "
                        "(devices: auto takes every GPU here)",
                    ),
                )
        return Replanned(execution, ())
    memory_free = not execution.memory_from.startswith("budget.")
    fixable = {"device_kind": budget.devices == "auto", "memory": memory_free, "missing_gpu": False}
    if not all(fixable[m.kind] for m in mismatches):
        raise PlanError(
            "this machine does not match the plan: "
            + "; ".join(m.message for m in mismatches)
            + ". Make the plan on this machine (`diffspec plan`), or leave the choice to the machine in "
            "the spec (`budget.devices: auto`, no memory figure in the budget)"
        )
    kind, devices, memory, source = _devices(
        budget, machine, execution.workers if execution.device_kind == "cpu" else None, decide_here=True
    )
    ray: RayPlan | None = None
    if execution.ray is not None:
        devices, memory, source, ray = ray_actors(budget, kind, devices, memory, source, execution.ray.address)
    changes = [f"devices: {execution.describe()}"]
    groups: dict[str, GroupDecision] = {}
    keys_by_group = {group_id(k): k for k in keys}
    for gid, old in execution.groups.items():
        key = keys_by_group.get(gid)
        if key is None:  # a group with nothing left to make
            continue
        new = memory_plan(key, kind, memory, budget.max_batch, budget.strategy)
        groups[gid] = GroupDecision(gid, old.model, old.source, new)
        if (new.strategy, new.batch_size) != (old.memory.strategy, old.memory.batch_size):
            changes.append(f"{old.model}: {old.memory.describe()} -> {new.describe()}")
    fresh = ExecutionPlan(
        kind,
        devices,
        _executor_for(execution.executor, len(devices)),
        memory,
        source,
        machine.describe(),
        budget,
        groups,
        ray,
    )
    changes[0] += f" -> {fresh.describe()}"
    return Replanned(fresh, tuple(changes))
