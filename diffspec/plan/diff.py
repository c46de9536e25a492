"""Diff compiled units against the catalog: the frozen `Plan` that `apply` executes.

A plan says, per class: how many units to create, how many already exist (keep), how many
catalog images the spec no longer asks for (remove), how many are owned by another class
(dedup), an estimated time and the memory strategy. `apply` runs exactly the plan's create
set; it never works out again what to run.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from diffspec.catalog.store import Catalog, CatalogIndex
from diffspec.plan.compile import ClassUnits, compile_spec
from diffspec.plan.estimate import MemoryPlan, memory_plan, seconds_per_image
from diffspec.plan.unit import PipelineKey, WorkUnit
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
    units: dict[str, ClassUnits] = field(repr=False)
    create_index: dict[str, np.ndarray] = field(repr=False)  # per class: unit positions to make
    owners: dict[str, tuple[str, ...]] = field(repr=False, default_factory=dict)  # fp -> classes, dedup only

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
    def has_changes(self) -> bool:
        return self.total_create > 0 or self.total_remove > 0

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
    grouped = table.group_by(["model_source", "width", "height", "steps"]).aggregate([("seconds", "approximate_median")])
    out = {}
    for row in grouped.to_pylist():
        if row["seconds_approximate_median"] is not None:
            out[(row["model_source"], row["width"], row["height"], row["steps"])] = float(row["seconds_approximate_median"])
    return out


def build_plan(loaded: LoadedSpec, catalog: Catalog | None = None) -> Plan:
    catalog = catalog or Catalog(loaded.output)
    compiled = compile_spec(loaded)
    index = catalog.index() if catalog.exists() else CatalogIndex([], [], [], catalog.state())
    existing = set(index.fingerprints)

    # Dedup across classes: the first class by name owns a shared unit.
    owners: dict[str, tuple[str, ...]] = {}
    total = sum(len(u) for u in compiled.values())
    all_fps: set[str] = set()
    for units in compiled.values():
        all_fps.update(units.fingerprints)
    duplicated = len(all_fps) != total
    owner_of: dict[str, str] = {}
    if duplicated:
        claims: dict[str, list[str]] = defaultdict(list)
        for name, units in compiled.items():
            for fp in units.fingerprints:
                if not claims[fp] or claims[fp][-1] != name:
                    claims[fp].append(name)
        for fp, names in claims.items():
            owner_of[fp] = names[0]
            if len(names) > 1:
                owners[fp] = tuple(names)

    budget = loaded.spec.budget
    history = _history(catalog, len(index) > 0)
    memory_cache: dict[PipelineKey, MemoryPlan] = {}
    removal_counts = Counter(c for fp, c in zip(index.fingerprints, index.class_names) if fp not in all_fps)
    classes: list[ClassPlan] = []
    create_index: dict[str, np.ndarray] = {}
    for name, units in compiled.items():
        cls = loaded.classes[name]
        fps = units.fingerprints
        if duplicated:
            mine = np.fromiter((owner_of[fp] == name for fp in fps), dtype=bool, count=len(fps))
        else:
            mine = np.ones(len(fps), dtype=bool)
        # Within a class, one fingerprint twice (e.g. two explicit equal seeds) is one unit too.
        if len(set(fps)) != len(fps):
            seen: set[str] = set()
            for i, fp in enumerate(fps):
                if fp in seen:
                    mine[i] = False
                seen.add(fp)
        missing = np.fromiter((fp not in existing for fp in fps), dtype=bool, count=len(fps)) if existing else np.ones(len(fps), dtype=bool)
        to_make = np.flatnonzero(mine & missing)
        create_index[name] = to_make
        keep = int(np.count_nonzero(mine & ~missing))
        shared = int(len(fps) - np.count_nonzero(mine))
        est = 0.0
        source = "table"
        memory = None
        per_key = Counter(units.variant_of[to_make].tolist()) if len(to_make) else Counter()
        for v_idx, variant in enumerate(units.variants):
            key = variant.key
            if key not in memory_cache:
                memory_cache[key] = memory_plan(key, budget.vram_gb, budget.ram_gb, budget.max_batch, budget.strategy)
            mem = memory_cache[key]
            memory = memory or mem
            count = per_key.get(v_idx, 0)
            if count:
                seconds, source = seconds_per_image(key, mem.device, mem.batch_size, history)
                est += seconds * count
        first_key = units.variants[0].key if units.variants else None
        classes.append(ClassPlan(
            name=name,
            label=units.label,
            model=first_key.model.name if first_key else cls.params["model"],
            family=first_key.model.family if first_key else "?",
            mode=cls.params["mode"],
            size=tuple(cls.params["size"]),
            steps=int(cls.params["steps"]),
            target=cls.target,
            create=len(to_make),
            keep=keep,
            remove=removal_counts.pop(name, 0),
            shared=shared,
            variants=len(units.variants),
            est_seconds=est,
            estimate_source=source,
            memory=memory or memory_plan(first_key, budget.vram_gb, budget.ram_gb, budget.max_batch, budget.strategy) if first_key else MemoryPlan("cpu", 0, 0, 0, "none", 1, True, "-"),
            existing=cls.existing_count,
            fill_to=cls.fill_to,
        ))
    removals = tuple(
        Removal(fp, c, p) for fp, c, p in zip(index.fingerprints, index.class_names, index.paths) if fp not in all_fps
    )
    # Classes that left the spec entirely still show, so their removals are visible.
    for gone, count in sorted(removal_counts.items()):
        classes.append(ClassPlan(gone, gone, "-", "-", "-", (0, 0), 0, 0, 0, 0, count, 0, 0, 0.0, "-",
                                 MemoryPlan("cpu", 0, 0, 0, "none", 1, True, "-")))
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
        units=compiled,
        create_index=create_index,
        owners=owners,
    )
