"""Compile a loaded spec into content-addressed work units (a pure function of the LoadedSpec).

Per class: the prompt templates and vars (and sweeps) expand into *variants*; with input
images, every (variant, input) pair is a *combination*. Units are dealt out in rounds, one unit
of every combination per round (docs/assignment.md), each gets a seed derived from (base seed,
seed stream, combination, round), and a fingerprint of its canonical text. Units are stored
columnar (`ClassUnits`) because a spec may expand to millions of them; `WorkUnit` objects are
made on demand.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from diffspec.content import default_cache
from diffspec.errors import PlanError
from diffspec.plan.seeds import balanced_assignment, combination_seeds, key64, splitmix64
from diffspec.plan.unit import (
    EmbeddingRef,
    LoraRef,
    ModelRef,
    PipelineKey,
    SpeedOptions,
    WorkUnit,
    normalize_prompt,
)
from diffspec.spec.loader import PLACEHOLDER, LoadedSpec, ResolvedClass, ResolvedParams
from diffspec.spec.model import SpeedSpec
from diffspec.tables.families import guidance_applies, resolve_family
from diffspec.tables.schedulers import scheduler_entry

MAX_VARIANTS = 200_000
CAPTION_VAR = "caption"  # a class prompt's placeholder for the captions stage's texts
MAX_COMBINATIONS = 10_000_000  # variants x input images: the assignment scores each one per round


@dataclass(frozen=True)
class Variant:
    prompt: str
    negative: str
    key: PipelineKey
    sweep: tuple[tuple[str, Any], ...]

    @property
    def identity(self) -> str:
        """The variant's content, not its position in a list: two equal ones are one variant."""
        return json.dumps([self.prompt, self.negative, self.key.canonical_group()], ensure_ascii=False)

    @property
    def stream_identity(self) -> str:
        """What the assignment and the seeds see: the spec's words for the variant (its text and
        sweep values), not the resolved pipeline, so a change of steps or of a LoRA file keeps
        every unit's seed and combination and only re-renders it."""
        return json.dumps([self.prompt, self.negative, [list(p) for p in self.sweep]], ensure_ascii=False, default=str)


@dataclass(frozen=True, eq=False)
class ClassUnits:
    """The units of one class, columnar."""

    name: str
    label: str
    variants: tuple[Variant, ...]
    inputs: tuple[Any, ...]  # InputFile
    indices: np.ndarray  # int64
    seeds: np.ndarray  # int64
    variant_of: np.ndarray  # int64 index into variants
    input_of: np.ndarray | None  # int64 index into inputs
    fingerprints: list[str]

    def __len__(self) -> int:
        return len(self.fingerprints)

    def unit(self, i: int, classes: tuple[str, ...] = ()) -> WorkUnit:
        variant = self.variants[int(self.variant_of[i])]
        inp = self.inputs[int(self.input_of[i])] if self.input_of is not None else None
        return WorkUnit(
            fingerprint=self.fingerprints[i],
            key=variant.key,
            class_name=self.name,
            index=int(self.indices[i]),
            seed=int(self.seeds[i]),
            prompt=variant.prompt,
            negative=variant.negative,
            input_image=inp.path if inp else None,
            input_hash=inp.sha256 if inp else None,
            mask_image=inp.mask_path if inp else None,
            mask_hash=inp.mask_sha256 if inp else None,
            variant=int(self.variant_of[i]),
            classes=classes or (self.name,),
        )

    def identity_keys(self) -> np.ndarray:
        """A 64-bit digest per unit of what its fingerprint covers: equal fingerprints imply
        equal keys, so distinct keys prove there is nothing to deduplicate (cheaply)."""
        variant_keys = np.array([key64(v.identity) for v in self.variants], dtype=np.uint64)
        keys = variant_keys[self.variant_of]
        if self.input_of is not None:
            input_keys = np.array([key64(i.sha256 + (i.mask_sha256 or "")) for i in self.inputs], dtype=np.uint64)
            keys = keys ^ splitmix64(input_keys[self.input_of])
        return splitmix64(keys ^ splitmix64(self.seeds.astype(np.uint64)))

    def units(self) -> Iterator[WorkUnit]:
        for i in range(len(self)):
            yield self.unit(i)


def model_ref(loaded: LoadedSpec, name: str) -> ModelRef:
    model = loaded.spec.models[name]
    source, content = model.source, None
    if not source.startswith("builtin:") and (folder := _local(loaded.root, source)) is not None and folder.is_dir():
        source = str(folder)  # a local folder: absolute, so runs from anywhere agree
        content = default_cache().folder_sha256(folder)
    controlnet, controlnet_content = model.controlnet, None
    if controlnet and (folder := _local(loaded.root, controlnet)) is not None and folder.is_dir():
        controlnet, controlnet_content = str(folder), default_cache().folder_sha256(folder)
    return ModelRef(
        name=name,
        source=source,
        family=resolve_family(source, model.family),
        revision=model.revision,
        variant=model.variant,
        dtype=model.dtype,
        use_safetensors=model.use_safetensors,
        trust_remote_code=model.trust_remote_code,
        controlnet=controlnet,
        loras=tuple(_lora_ref(loaded.root, lora) for lora in model.loras),
        embeddings=tuple(_embedding_ref(loaded.root, e) for e in model.embeddings),
        params_b=model.params_b,
        content=content,
        controlnet_content=controlnet_content,
        speed=speed_options(model.speed),
    )


def _frozen(value: Any) -> Any:
    """Lists as tuples, so the options hash (ModelRef is a dict key and the load key)."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list | tuple) else value


def speed_options(speed: SpeedSpec) -> SpeedOptions:
    """`models.<m>.speed` as the planner and the backend read it (every default filled in)."""
    compiled = speed.compile_options()
    cache = speed.cache
    return SpeedOptions(
        compile=tuple(sorted(compiled.model_dump(mode="json").items())) if compiled is not None else None,
        channels_last=bool(speed.channels_last),
        attention=speed.attention,
        cache=cache.kind if cache is not None else None,
        cache_params=tuple(sorted((k, _frozen(v)) for k, v in cache.params().items())) if cache is not None else (),
    )


def _local(root: Path, source: str) -> Path | None:
    """The absolute path a source names when it exists on disk (relative to the spec's folder),
    else None: a hub id, identified by (id, revision)."""
    path = Path(source).expanduser()
    path = path if path.is_absolute() else root / path
    return path.resolve() if path.exists() else None


def _adapter_content(path: Path, weight_name: str | None) -> str:
    """What a LoRA or embedding loads: the named file in a folder, else the file or folder."""
    if path.is_dir() and weight_name and (path / weight_name).is_file():
        return default_cache().file_sha256(path / weight_name)
    return default_cache().sha256(path)


def _lora_ref(root: Path, lora: Any) -> LoraRef:
    path = _local(root, lora.source)
    if path is None:
        return LoraRef(lora.source, lora.weight_name, lora.scale, lora.revision)
    return LoraRef(str(path), lora.weight_name, lora.scale, lora.revision, _adapter_content(path, lora.weight_name))


def _embedding_ref(root: Path, emb: Any) -> EmbeddingRef:
    path = _local(root, emb.source)
    if path is None:
        return EmbeddingRef(emb.source, emb.token, emb.weight_name)
    return EmbeddingRef(str(path), emb.token, emb.weight_name, _adapter_content(path, emb.weight_name))


def _pipeline_key(
    loaded: LoadedSpec, cls: ResolvedClass, params: ResolvedParams, models: dict[str, ModelRef]
) -> PipelineKey:
    name = params.model
    if name not in models:
        models[name] = model_ref(loaded, name)
    model = models[name]
    width, height = params.size
    # The table entry (diffusers class + kwargs) our scheduler name stands for is part of the identity,
    # so changing the table re-plans the units it affects.
    return PipelineKey(
        model=model,
        mode=params.mode,
        scheduler=params.scheduler,
        scheduler_kwargs=tuple(sorted(params.scheduler_kwargs)),
        width=int(width),
        height=int(height),
        steps=int(params.steps),
        guidance=float(params.guidance),
        strength=float(params.strength) if params.mode in ("img2img", "inpaint") else None,
        conditioning_scale=float(params.conditioning_scale) if params.mode == "controlnet" else None,
        control=_control(cls) if params.mode == "controlnet" else None,
        scheduler_entry=scheduler_entry(params.scheduler),
    )


def _control(cls: ResolvedClass) -> str | None:
    """The control kind as the backend reads it; canny carries its thresholds (they change pixels)."""
    if cls.control == "canny":
        return f"canny:{cls.canny[0]}:{cls.canny[1]}"
    return cls.control


def _effective_negative(key: PipelineKey, negative: str) -> str:
    """The negative prompt only changes pixels where classifier-free guidance applies: elsewhere
    it is dropped so it does not split identical units."""
    return negative if guidance_applies(key.model.family, key.guidance) else ""


def _render(template: str, values: dict[str, str]) -> str:
    text = PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
    return normalize_prompt(text.replace("{{", "{").replace("}}", "}"))


def expand_variants(loaded: LoadedSpec, cls: ResolvedClass, models: dict[str, ModelRef]) -> tuple[Variant, ...]:
    builtins = {"class": cls.name, "label": cls.label, "dataset": loaded.spec.dataset}
    prompts: list[str] = []
    for template in cls.templates:
        used = [v for v in dict.fromkeys(m.group(1) for m in PLACEHOLDER.finditer(template)) if v not in builtins]
        if cls.expand == "zip" and used:
            length = min(len(cls.variables[v]) for v in used)
            combos: Iterable[tuple[str, ...]] = [tuple(cls.variables[v][i] for v in used) for i in range(length)]
        else:
            combos = itertools.product(*(cls.variables[v] for v in used))
        for combo in combos:
            prompts.append(_render(template, {**builtins, **dict(zip(used, combo))}))
            if len(prompts) > MAX_VARIANTS:
                raise PlanError(
                    f"class {cls.name!r} expands to more than {MAX_VARIANTS} prompt variants; use `expand: zip` or fewer vars"
                )
    sweep_keys = sorted(cls.sweep)
    sweeps = list(itertools.product(*(cls.sweep[k] for k in sweep_keys))) or [()]
    if len(prompts) * len(sweeps) > MAX_VARIANTS:
        raise PlanError(f"class {cls.name!r} expands to {len(prompts) * len(sweeps)} variants (limit {MAX_VARIANTS})")
    variants: dict[str, Variant] = {}
    keys: dict[str, PipelineKey] = {}
    for combo in sweeps:
        overrides = dict(zip(sweep_keys, combo))
        params = cls.params_for(overrides)
        sweep_id = json.dumps(overrides, sort_keys=True)
        if sweep_id not in keys:
            keys[sweep_id] = _pipeline_key(loaded, cls, params, models)
        negative = _effective_negative(keys[sweep_id], normalize_prompt(params.negative))
        for prompt in prompts:
            variant = Variant(prompt, negative, keys[sweep_id], tuple(sorted(overrides.items())))
            variants.setdefault(variant.identity, variant)  # two templates rendering one text are one variant
    return tuple(variants.values())


def _json_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def compile_class(loaded: LoadedSpec, cls: ResolvedClass, models: dict[str, ModelRef]) -> ClassUnits:
    variants = expand_variants(loaded, cls, models)
    n = cls.target
    indices = np.arange(n, dtype=np.int64)
    combo_keys = _combination_keys(cls, variants)
    combo_of, rounds = balanced_assignment(cls.seed_key, combo_keys, n)
    n_inputs = max(1, len(cls.inputs))
    variant_of, input_pos = np.divmod(combo_of, n_inputs)
    input_of = input_pos if cls.inputs else None
    seeds = combination_seeds(int(cls.params.seed), cls.seed_key, combo_keys[combo_of], rounds)
    if cls.seeds is not None:
        # Explicit seeds belong to positions in the order; units beyond them (top-ups that
        # replace rejected images) take derived seeds.
        given = np.asarray(cls.seeds[:n], dtype=np.int64)
        seeds[: len(given)] = given

    # Hash fast: one sha256 state per (variant, input) holding everything up to the seed, copied
    # per unit, which then adds only its seed and the tail. Must equal WorkUnit.canonical() exactly.
    fingerprints = np.empty(n, dtype=object)
    order = np.argsort(combo_of, kind="stable")
    pairs, starts = np.unique(combo_of[order], return_index=True)
    bounds = np.append(starts, n)
    for pair, lo, hi in zip(pairs.tolist(), bounds[:-1].tolist(), bounds[1:].tolist()):
        v_idx, i_idx = divmod(pair, n_inputs)
        variant = variants[v_idx]
        inp = cls.inputs[i_idx] if cls.inputs else None
        head = "[" + _json_str(variant.prompt) + "," + _json_str(variant.negative) + ","
        tail = (
            ","
            + (_json_str(inp.sha256) if inp else "null")
            + ","
            + (_json_str(inp.mask_sha256) if inp and inp.mask_sha256 else "null")
            + "]"
        ).encode("utf-8")
        state = hashlib.sha256((variant.key.group_prefix() + head).encode("utf-8"))
        members = order[lo:hi]
        fingerprints[members] = list(map(_hasher(state, tail), seeds[members].tolist()))
    return ClassUnits(
        cls.name, cls.label, variants, cls.inputs, indices, seeds, variant_of, input_of, fingerprints.tolist()
    )


def _combination_keys(cls: ResolvedClass, variants: tuple[Variant, ...]) -> np.ndarray:
    """A 64-bit key per combination (variant-major, then input), from content only: renaming or
    moving an input image, or listing variants in another order, changes no key."""
    variant_keys = np.array([key64(v.stream_identity) for v in variants], dtype=np.uint64)
    if not cls.inputs:
        return variant_keys
    if len(variants) * len(cls.inputs) > MAX_COMBINATIONS:
        raise PlanError(
            f"class {cls.name!r} has {len(variants)} variants x {len(cls.inputs)} input images = "
            f"{len(variants) * len(cls.inputs)} combinations (limit {MAX_COMBINATIONS}); use fewer of either"
        )
    seen: dict[str, int] = {}
    names = []
    for i in cls.inputs:
        content = i.sha256 + (i.mask_sha256 or "")
        seen[content] = seen.get(content, -1) + 1  # two files with one content are still two inputs
        names.append(f"{content}#{seen[content]}" if seen[content] else content)
    input_keys = splitmix64(np.array([key64("input:" + c) for c in names], dtype=np.uint64))
    return splitmix64(variant_keys[:, None] ^ input_keys[None, :]).ravel()


def _hasher(state: Any, tail: bytes) -> Any:
    copy = state.copy

    def fingerprint(seed: int) -> str:
        h = copy()
        h.update(b"%d%s" % (seed, tail))
        digest: str = h.hexdigest()
        return digest

    return fingerprint


def effective_class(
    loaded: LoadedSpec,
    name: str,
    captions: Mapping[str, tuple[str, ...]] | None = None,
    pending: Collection[str] = (),
) -> ResolvedClass:
    """The class as it compiles: with its ``{caption}`` values, or with no units while it waits for them."""
    cls = loaded.classes[name]
    uses_captions = any(CAPTION_VAR in (m.group(1) for m in PLACEHOLDER.finditer(t)) for t in cls.templates)
    if name in pending or (uses_captions and (captions is None or name not in captions)):
        return replace(cls, target=0, seeds=None, variables={**cls.variables, CAPTION_VAR: ("",)})
    if captions is not None and name in captions:
        return replace(cls, variables={**cls.variables, CAPTION_VAR: captions[name]})
    return cls


def compile_spec(
    loaded: LoadedSpec,
    captions: Mapping[str, tuple[str, ...]] | None = None,
    pending: Collection[str] = (),
) -> dict[str, ClassUnits]:
    """Every class's units, classes in name order (the order dedup ownership follows).

    ``captions`` gives the ``{caption}`` values of the classes whose prompts use them (made by
    the captions stage); a class in ``pending`` still waits for its captions and has no units
    yet (its pipeline is still planned, so the plan's execution decisions cover it)."""
    models: dict[str, ModelRef] = {}
    compiled = {}
    for name in sorted(loaded.classes):
        compiled[name] = compile_class(loaded, effective_class(loaded, name, captions, pending), models)
    default_cache().flush()  # content hashes of local files, for the next plan (diffspec/content.py)
    return compiled
