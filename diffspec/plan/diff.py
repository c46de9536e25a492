"""Diff compiled units against the catalog: the frozen `Plan` that `apply` executes.

A plan says, per class: how many units to create, how many already exist (keep), how many
catalog images the spec no longer asks for (remove), how many are owned by another class
(dedup), an estimated time and the memory strategy. `apply` runs exactly the plan's create
set; it never works out again what to run.
"""

from __future__ import annotations

import gc
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffspec import machine as machine_probe
from diffspec.catalog.columns import column
from diffspec.catalog.store import Catalog, CatalogIndex
from diffspec.catalog.verdicts import rejected_fingerprints
from diffspec.plan.compile import ClassUnits, compile_spec
from diffspec.plan.estimate import MemoryPlan, seconds_per_image
from diffspec.plan.execution import BudgetInputs, ExecutionPlan, plan_execution
from diffspec.plan.filter_stage import FiltersPlan, plan_filters
from diffspec.plan.stages import CaptionsPlan, SegmentPlan, plan_captions, plan_segment, with_caption_estimates
from diffspec.plan.topup import top_up
from diffspec.plan.unit import WorkUnit
from diffspec.spec.loader import LoadedSpec


@dataclass(frozen=True)
class ClassPlan:
    name: str
    label: str
    model: str
    family: str
    mode: str
    size: tuple[int, int]
    steps: int
    target: int
    create: int
    keep: int
    remove: int
    shared: int  # units another class already asks for (made once, owned there)
    variants: int
    est_seconds: float
    estimate_source: str
    memory: MemoryPlan
    existing: int | None = None
    fill_to: int | None = None
    pending: int = 0  # image units that wait for this class's captions (planned once they exist)
    rejected: int = 0  # of the class's planned images in the catalog: rejected by a filter or a person
    replaced: int = 0  # units planned beyond the target to replace rejected images (replace_rejected)
    replace_rejected: bool = False

    @property
    def short(self) -> int:
        """Images the class lacks to hold ``target`` that are not rejected, after this plan's
        units are made (0 when replace_rejected plans enough of them)."""
        return max(0, self.target - (self.keep + self.shared + self.create - self.rejected))


@dataclass(frozen=True)
class Removal:
    fingerprint: str
    class_name: str
    path: str


@dataclass(frozen=True, eq=False)
class Plan:
    dataset: str
    spec_path: str
    spec_hash: str
    profile: str | None
    output: str
    catalog_state: str
    created_at: float
    classes: tuple[ClassPlan, ...]
    removals: tuple[Removal, ...]
    execution: ExecutionPlan = field(repr=False)
    units: dict[str, ClassUnits] = field(repr=False)
    create_index: dict[str, np.ndarray] = field(repr=False)  # per class: unit positions to make
    owners: dict[str, tuple[str, ...]] = field(repr=False, default_factory=dict)  # fp -> classes, dedup only
    # Post-generation stages, in the order apply runs them (after the images they read).
    stages: tuple[CaptionsPlan | SegmentPlan | FiltersPlan, ...] = ()

    @property
    def total_create(self) -> int:
        return sum(c.create for c in self.classes)

    @property
    def total_keep(self) -> int:
        return sum(c.keep for c in self.classes)

    @property
    def total_remove(self) -> int:
        return len(self.removals)

    @property
    def total_seconds(self) -> float:
        return sum(c.est_seconds for c in self.classes)

    @property
    def pending_images(self) -> int:
        return sum(c.pending for c in self.classes)

    @property
    def total_stage_create(self) -> int:
        return sum(s.total_create for s in self.stages)

    @property
    def has_changes(self) -> bool:
        return self.total_create > 0 or self.total_remove > 0 or self.total_stage_create > 0 or self.pending_images > 0

    def units_to_create(self) -> Iterator[WorkUnit]:
        for name, positions in self.create_index.items():
            units = self.units[name]
            for i in positions.tolist():
                fp = units.fingerprints[i]
                yield units.unit(i, self.owners.get(fp, (name,)))

    def all_units(self) -> Iterator[WorkUnit]:
        seen: set[str] = set()
        for name, units in self.units.items():
            for i, fp in enumerate(units.fingerprints):
                if fp not in seen:
                    seen.add(fp)
                    yield units.unit(i, self.owners.get(fp, (name,)))


def _history(catalog: Catalog, has_rows: bool) -> dict[tuple[str, int, int, int], float]:
    """Median recorded seconds per image by (model source, width, height, steps)."""
    if not has_rows:
        return {}
    table = catalog.read_table("images", ["model_source", "width", "height", "steps", "seconds"])
    if table.num_rows == 0:
        return {}
    grouped = table.group_by(["model_source", "width", "height", "steps"]).aggregate(
        [("seconds", "approximate_median")]
    )
    out = {}
    for row in grouped.to_pylist():
        if row["seconds_approximate_median"] is not None:
            out[(row["model_source"], row["width"], row["height"], row["steps"])] = float(
                row["seconds_approximate_median"]
            )
    return out


def build_plan(
    loaded: LoadedSpec,
    catalog: Catalog | None = None,
    *,
    executor: str | None = None,
    workers: int | None = None,
    execution: ExecutionPlan | None = None,
    machine: machine_probe.Machine | None = None,
    ray_address: str | None = None,
) -> Plan:
    """Compile, diff against the catalog, and decide how to run: the frozen plan `apply` executes.

    ``executor`` and ``workers`` override the spec's budget (``--executor``, ``--workers``);
    ``ray_address`` is the Ray cluster of ``executor="ray"`` (None: a local Ray for the run);
    ``execution`` reuses decisions already made (a saved plan file) instead of deciding again
    on this machine; ``machine`` is the machine to plan for (default: this one, probed)."""
    # A plan holds millions of strings in a few containers and makes no cycles: the cyclic
    # collector would only walk those containers again and again (about 7% of a 1M-unit plan).
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _build_plan(loaded, catalog, executor, workers, execution, machine, ray_address)
    finally:
        if enabled:
            gc.enable()


def _build_plan(
    loaded: LoadedSpec,
    catalog: Catalog | None,
    executor: str | None,
    workers: int | None,
    execution: ExecutionPlan | None,
    machine: machine_probe.Machine | None,
    ray_address: str | None = None,
) -> Plan:
    import pyarrow as pa

    catalog = catalog or Catalog(loaded.output)
    captions_plan, caption_texts = plan_captions(loaded, catalog)
    pending = set(captions_plan.pending_classes) if captions_plan is not None else set()
    compiled = compile_spec(loaded, caption_texts, pending)
    rejected = rejected_fingerprints(catalog) if catalog.exists() else set()
    compiled, topups = top_up(loaded, compiled, rejected, caption_texts, pending)
    index = (
        catalog.index()
        if catalog.exists()
        else CatalogIndex([], column([], pa.string()), catalog.state(), None, frozenset())
    )

    names = list(compiled)
    offsets = np.cumsum([0] + [len(compiled[n]) for n in names])
    planned = [fp for n in names for fp in compiled[n].fingerprints]
    # Duplicates are rare: rule them out with 64-bit identity keys (a numpy sort) before paying
    # for an exact check with a set of a million strings.
    keys = np.concatenate([compiled[n].identity_keys() for n in names]) if names else np.zeros(0, np.uint64)
    planned_set: set[str] | None = None
    duplicated = False
    ordered = np.sort(keys)
    if bool(np.any(ordered[1:] == ordered[:-1])):
        planned_set = set(planned)
        duplicated = len(planned_set) != len(planned)

    # Dedup: the first class by name (then the lowest index) owns a shared unit.
    owners: dict[str, tuple[str, ...]] = {}
    first_claim = np.ones(len(planned), dtype=bool)
    if duplicated:
        claims: dict[str, list[str]] = defaultdict(list)
        seen: set[str] = set()
        for pos, fp in enumerate(planned):
            cls_name = names[int(np.searchsorted(offsets, pos, side="right")) - 1]
            if fp in seen:
                first_claim[pos] = False
            seen.add(fp)
            if not claims[fp] or claims[fp][-1] != cls_name:
                claims[fp].append(cls_name)
        owners = {fp: tuple(c) for fp, c in claims.items() if len(c) > 1}

    gone_rows: list[int] = []
    if len(index):
        in_catalog = index.fingerprint_set
        missing_all = ~np.fromiter(map(in_catalog.__contains__, planned), dtype=bool, count=len(planned))
        kept = int(np.count_nonzero(first_claim & ~missing_all))
        if kept != len(index):  # some catalog images are no longer planned
            planned_set = planned_set or set(planned)
            gone_rows = [i for i, fp in enumerate(index.fingerprints) if fp not in planned_set]
    else:
        missing_all = np.ones(len(planned), dtype=bool)
    gone = [index.fingerprints[i] for i in gone_rows]
    gone_classes = index.class_names.take(column(gone_rows, pa.int64())).to_pylist() if gone_rows else []
    removal_counts = Counter(gone_classes)

    if execution is None:
        pipeline_keys = [v.key for n in names for v in compiled[n].variants]
        execution = plan_execution(
            BudgetInputs.from_budget(loaded.spec.budget),
            pipeline_keys,
            machine or machine_probe.probe_machine(),
            executor=executor,
            workers=workers,
            ray_address=ray_address,
        )
    history: dict[tuple[str, int, int, int], float] | None = None  # read only if something is to be made
    classes: list[ClassPlan] = []
    create_index: dict[str, np.ndarray] = {}
    for c_idx, name in enumerate(names):
        units = compiled[name]
        cls = loaded.classes[name]
        lo, hi = int(offsets[c_idx]), int(offsets[c_idx + 1])
        mine = first_claim[lo:hi]
        missing = missing_all[lo:hi]
        to_make = np.flatnonzero(mine & missing)
        create_index[name] = to_make
        keep = int(np.count_nonzero(mine & ~missing))
        shared = int(len(units) - np.count_nonzero(mine))
        est = 0.0
        source = "table"
        memory = None
        per_variant = np.bincount(units.variant_of[to_make], minlength=len(units.variants)) if len(to_make) else None
        for v_idx, variant in enumerate(units.variants):
            key = variant.key
            mem = execution.decision(key)
            memory = memory or mem
            count = int(per_variant[v_idx]) if per_variant is not None else 0
            if count:
                if history is None:
                    history = _history(catalog, len(index) > 0)
                seconds, source = seconds_per_image(key, mem.device, mem.batch_size, history)
                est += seconds * count
        first_key = units.variants[0].key if units.variants else None
        if memory is None:
            memory = execution.decision(first_key) if first_key else MemoryPlan("cpu", 0, 0, 0, "none", 1, True, "-")
        classes.append(
            ClassPlan(
                name=name,
                label=units.label,
                model=cls.params.model,
                family=first_key.model.family if first_key else "-",
                mode=cls.params.mode,
                size=cls.params.size,
                steps=cls.params.steps,
                target=cls.target,
                create=len(to_make),
                keep=keep,
                remove=removal_counts.pop(name, 0),
                shared=shared,
                variants=len(units.variants),
                est_seconds=est,
                estimate_source=source,
                memory=memory,
                existing=cls.existing_count,
                fill_to=cls.fill_to,
                pending=cls.target if name in pending else 0,
                rejected=topups[name].rejected,
                replaced=topups[name].added,
                replace_rejected=cls.replace_rejected,
            )
        )
    paths = index.paths_of(gone)
    removals = tuple(Removal(fp, c, paths.get(fp, "")) for fp, c in zip(gone, gone_classes))
    # Classes that left the spec entirely still show, so their removals are visible.
    for left, count in sorted(removal_counts.items()):
        classes.append(
            ClassPlan(
                left,
                left,
                "-",
                "-",
                "-",
                (0, 0),
                0,
                0,
                0,
                0,
                count,
                0,
                0,
                0.0,
                "-",
                MemoryPlan("cpu", 0, 0, 0, "none", 1, True, "-"),
            )
        )
    # Show classes in the order the spec lists them (ownership above follows names, not this).
    order = {name: i for i, name in enumerate(loaded.classes)}
    classes.sort(key=lambda c: order.get(c.name, len(order)))
    stages: tuple[CaptionsPlan | SegmentPlan | FiltersPlan, ...] = ()
    if captions_plan is not None:
        stages += (with_caption_estimates(captions_plan, execution.device_kind),)
    # Per class: the images it owns, in unit-index order, and whether each is still to be made.
    owned: list[tuple[str, str, list[str], Any]] = []
    if loaded.spec.stages.segment is not None or loaded.spec.stages.filters:
        for name in sorted(names, key=lambda n: order.get(n, len(order))):
            c_idx = names.index(name)
            lo, hi = int(offsets[c_idx]), int(offsets[c_idx + 1])
            positions = np.flatnonzero(first_claim[lo:hi])
            fps = compiled[name].fingerprints
            owned.append(
                (name, compiled[name].label, [fps[i] for i in positions.tolist()], missing_all[lo:hi][positions])
            )
    if loaded.spec.stages.segment is not None:
        segment = plan_segment(loaded, owned, catalog, execution.device_kind)
        stages += (segment,) if segment is not None else ()
    # The filters run last: after the images and after the segment stage (nothing reads them in between).
    filters = plan_filters(loaded, owned, catalog, execution.device_kind)
    stages += (filters,) if filters is not None else ()
    return Plan(
        dataset=loaded.spec.dataset,
        spec_path=str(loaded.path),
        spec_hash=loaded.content_hash,
        profile=loaded.profile,
        output=str(loaded.output),
        catalog_state=index.state,
        created_at=time.time(),
        classes=tuple(classes),
        removals=removals,
        execution=execution,
        units=compiled,
        create_index=create_index,
        owners=owners,
        stages=stages,
    )
