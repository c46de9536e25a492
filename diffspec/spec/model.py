"""Pydantic models of what users write in a dataset spec.

This module is the schema's single source of truth: the JSON Schema (`diffspec schema`),
validation and the compiler all read it. It imports nothing heavy.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from diffspec.tables.schedulers import SCHEDULER_NAMES as _TABLE_NAMES
from diffspec.tables.speed import ATTENTION_NAMES, CompileBackend, CompileMode

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,127}$"
_NAME_RE = re.compile(NAME_PATTERN)

Mode = Literal["txt2img", "img2img", "inpaint", "controlnet"]
DType = Literal["auto", "float32", "float16", "bfloat16"]
Family = Literal["auto", "sd", "sdxl", "sd3", "flux", "kandinsky", "builtin"]
Scalar = str | int | float | bool | None
# A plan holds every unit in memory: beyond this a typo (an extra zero or ten) is far likelier
# than intent, and the planner would fail on memory instead of saying so.
MAX_IMAGES_PER_CLASS = 10_000_000

# Our scheduler names, from the torch-free table (diffspec/tables/schedulers.py), so `validate`
# checks names without importing diffusers and the names have one owner.
SCHEDULER_NAMES: tuple[str, ...] = _TABLE_NAMES


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _check_name(value: str, what: str) -> str:
    if not _NAME_RE.match(value) or value in {".", ".."}:
        raise ValueError(
            f"{what} {value!r} must be 1-128 characters of letters, digits, '_', '-', '.', ' ' "
            "and may not start with a separator (it becomes a folder name)"
        )
    return value


def _check_class_name(value: str) -> str:
    return _check_name(value, "class name")


# Validated per key, so every bad class name is reported at its own key.
ClassName = Annotated[str, AfterValidator(_check_class_name)]


class LoraSpec(StrictModel):
    """A LoRA adapter loaded with diffusers' `load_lora_weights`."""

    source: str = Field(description="Hub id, local folder or .safetensors file of the adapter.")
    weight_name: str | None = Field(None, description="File inside `source`, if it holds several.")
    scale: float = Field(1.0, description="Adapter strength.")
    revision: str | None = None


class EmbeddingSpec(StrictModel):
    """A textual-inversion embedding loaded with `load_textual_inversion`."""

    source: str
    token: str | None = None
    weight_name: str | None = None


Size = tuple[Annotated[int, Field(ge=8, le=8192)], Annotated[int, Field(ge=8, le=8192)]]
Steps = Annotated[int, Field(ge=1, le=1000)]
Guidance = Annotated[float, Field(ge=0.0, le=100.0)]
Seed = Annotated[int, Field(ge=0, lt=2**63)]
Strength = Annotated[float, Field(gt=0.0, le=1.0)]
ConditioningScale = Annotated[float, Field(ge=0.0, le=5.0)]

_DESCRIPTIONS = {
    "model": "Name of an entry in `models`.",
    "mode": "txt2img, img2img, inpaint or controlnet.",
    "size": "[width, height] in pixels.",
    "steps": "Denoising steps.",
    "guidance": "Classifier-free guidance scale (<= 1 turns it off).",
    "negative": "Negative prompt.",
    "seed": "Base seed.",
    "strength": "img2img / inpaint denoising strength.",
    "scheduler": f"One of {', '.join(SCHEDULER_NAMES)}.",
    "scheduler_kwargs": "Extra options of the scheduler class.",
    "conditioning_scale": "ControlNet conditioning scale.",
}


class GenParams(StrictModel):
    """Generation parameters. Every field is optional so that any level can override any subset:
    spec defaults < model defaults < profile < class. The built-in values are on `Defaults`."""

    model: str | None = Field(None, description=_DESCRIPTIONS["model"])
    mode: Mode | None = Field(None, description=_DESCRIPTIONS["mode"])
    size: Size | None = Field(None, description=_DESCRIPTIONS["size"])
    steps: Steps | None = Field(None, description=_DESCRIPTIONS["steps"])
    guidance: Guidance | None = Field(None, description=_DESCRIPTIONS["guidance"])
    negative: str | None = Field(None, description=_DESCRIPTIONS["negative"])
    seed: Seed | None = Field(None, description=_DESCRIPTIONS["seed"])
    strength: Strength | None = Field(None, description=_DESCRIPTIONS["strength"])
    scheduler: str | None = Field(None, description=_DESCRIPTIONS["scheduler"])
    scheduler_kwargs: dict[str, Scalar] | None = Field(None, description=_DESCRIPTIONS["scheduler_kwargs"])
    conditioning_scale: ConditioningScale | None = Field(None, description=_DESCRIPTIONS["conditioning_scale"])

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str | None) -> str | None:
        if value is not None and value not in SCHEDULER_NAMES:
            from diffspec.spec.suggest import did_you_mean

            hint = did_you_mean(value, SCHEDULER_NAMES) or f" (one of: {', '.join(SCHEDULER_NAMES)})"
            raise ValueError(f"unknown scheduler {value!r}{hint}")
        return value


class Defaults(GenParams):
    """The spec's `defaults:`. The built-in value of every generation parameter is defined here
    and only here: the JSON Schema shows it, the loader starts from it, docs/spec.md lists it
    (a test checks all three agree)."""

    mode: Mode = Field("txt2img", description=_DESCRIPTIONS["mode"])
    size: Size = Field((512, 512), description=_DESCRIPTIONS["size"])
    steps: Steps = Field(30, description=_DESCRIPTIONS["steps"])
    guidance: Guidance = Field(7.5, description=_DESCRIPTIONS["guidance"])
    negative: str = Field("", description=_DESCRIPTIONS["negative"])
    seed: Seed = Field(0, description=_DESCRIPTIONS["seed"])
    strength: Strength = Field(0.75, description=_DESCRIPTIONS["strength"])
    scheduler: str = Field("default", description=_DESCRIPTIONS["scheduler"] + " `default` keeps the model's own.")
    scheduler_kwargs: dict[str, Scalar] = Field({}, description=_DESCRIPTIONS["scheduler_kwargs"])
    conditioning_scale: ConditioningScale = Field(1.0, description=_DESCRIPTIONS["conditioning_scale"])


#: The generation parameters a spec sets (every field of GenParams).
PARAM_NAMES: tuple[str, ...] = tuple(GenParams.model_fields)


class CompileSpec(StrictModel):
    """``torch.compile`` of the denoiser (the UNet or transformer). Changes float rounding only."""

    mode: CompileMode = Field(
        "default",
        description="torch.compile mode: `reduce-overhead` adds CUDA graphs on a GPU, `max-autotune` "
        "searches kernels (long first compile).",
    )
    backend: CompileBackend = Field("inductor", description="torch.compile backend.")
    fullgraph: bool = Field(False, description="Fail instead of splitting the graph at unsupported code.")
    dynamic: bool | None = Field(
        None, description="Compile for dynamic shapes (null: PyTorch decides after the first recompile)."
    )
    regional: bool = Field(
        False,
        description="Compile only the repeated blocks (diffusers' `compile_repeated_blocks`): a much "
        "shorter first compile for nearly the same speed.",
    )


class FirstBlockCache(StrictModel):
    """First Block Cache: skip the remaining blocks while the first block's residual barely changes."""

    threshold: Annotated[float, Field(gt=0, le=10)] = Field(
        0.05, description="Relative change of the first block's residual below which the other blocks are skipped."
    )


class TaylorSeerCache(StrictModel):
    """TaylorSeer: predict the blocks' outputs from a Taylor series between full steps."""

    cache_interval: Annotated[int, Field(ge=1, le=1000)] = Field(5, description="Steps between full computations.")
    disable_cache_before_step: Annotated[int, Field(ge=0, le=1000)] = Field(
        3, description="Steps computed in full before predictions start."
    )
    disable_cache_after_step: Annotated[int, Field(ge=0, le=1000)] | None = Field(
        None, description="Steps from this one on are computed in full."
    )
    max_order: Annotated[int, Field(ge=1, le=4)] = Field(1, description="Order of the Taylor expansion.")
    factors_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "bfloat16", description="dtype of the stored Taylor factors."
    )
    lite: bool = Field(False, description="diffusers' low-memory pattern (`use_lite_mode`).")


class MagCache(StrictModel):
    """MagCache: skip blocks while precomputed magnitude ratios say the residual changes little."""

    threshold: Annotated[float, Field(gt=0, le=10)] = Field(0.06, description="Accumulated error budget per skip run.")
    max_skip_steps: Annotated[int, Field(ge=1, le=1000)] = Field(3, description="Most consecutive skipped steps.")
    retention_ratio: Annotated[float, Field(ge=0, le=1)] = Field(
        0.2, description="Share of the first steps that are never skipped."
    )
    ratios: Literal["flux"] | list[Annotated[float, Field(gt=0)]] = Field(
        "flux",
        description="Magnitude ratios per step: `flux` (diffusers' FLUX_MAG_RATIOS, measured on FLUX.1-dev) "
        "or a list calibrated for this checkpoint; interpolated to the step count.",
    )


class PyramidAttentionBroadcast(StrictModel):
    """Pyramid Attention Broadcast: reuse attention outputs for a few steps inside a timestep range."""

    block_skip_range: Annotated[int, Field(ge=2, le=100)] = Field(
        2, description="Attention is computed once every this many steps (the others reuse it)."
    )
    timestep_range: tuple[Annotated[int, Field(ge=-1, le=1000)], Annotated[int, Field(ge=0, le=1000)]] = Field(
        (100, 800), description="[low, high] timesteps (0..1000) in which attention may be reused."
    )


class CacheSpec(StrictModel):
    """Exactly one diffusers step cache (``enable_cache``) on the denoiser. Changes pixels."""

    first_block: FirstBlockCache | None = None
    taylorseer: TaylorSeerCache | None = None
    magcache: MagCache | None = None
    pyramid_attention_broadcast: PyramidAttentionBroadcast | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> CacheSpec:
        chosen = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError(
                f"name exactly one step cache ({', '.join(type(self).model_fields)}), got {len(chosen)}"
                + (f": {', '.join(chosen)}" if chosen else "")
            )
        return self

    @property
    def kind(self) -> str:
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)

    def params(self) -> dict[str, Any]:
        """The chosen cache's parameters, every default filled in."""
        chosen = getattr(self, self.kind)
        return dict(chosen.model_dump(mode="json"))


class SpeedSpec(StrictModel):
    """Speed options of a model. Step caches (and approximate attention backends) change pixels and
    are in the fingerprint; the others change float rounding only and are in the run record."""

    compile: bool | CompileSpec = Field(False, description="torch.compile the denoiser (true: default options).")
    channels_last: bool = Field(
        False, description="Channels-last memory format for the convolution models (UNet, VAE, ControlNet)."
    )
    attention: str | None = Field(
        None, description="diffusers attention backend of the denoiser, e.g. `flash`, `flex`, `sage`, `xformers`."
    )
    cache: CacheSpec | None = Field(None, description="A diffusers step cache on the denoiser.")

    @field_validator("attention")
    @classmethod
    def _known_backend(cls, value: str | None) -> str | None:
        if value is not None and value not in ATTENTION_NAMES:
            from diffspec.spec.suggest import did_you_mean

            hint = did_you_mean(value, ATTENTION_NAMES) or ""
            raise ValueError(
                f"unknown attention backend {value!r}{hint} (diffusers 0.42 offers: {', '.join(ATTENTION_NAMES)})"
            )
        return value

    def compile_options(self) -> CompileSpec | None:
        if self.compile is True:
            return CompileSpec()
        return self.compile or None


class ModelSpec(StrictModel):
    """A named model: where its weights are and how to load them."""

    source: str = Field(description="Hub id (org/name), a local folder, or `builtin:digits` for the embedded model.")
    family: Family = Field("auto", description="Pipeline family; `auto` guesses from the source.")
    revision: str | None = Field(None, description="Pinned hub revision (commit sha or tag).")
    variant: str | None = Field(None, description="Weight variant, e.g. `fp16`.")
    dtype: DType = "auto"
    scheduler: str | None = None
    scheduler_kwargs: dict[str, Scalar] = Field(default_factory=dict)
    use_safetensors: bool = Field(True, description="Refuse pickle weights unless set to false.")
    trust_remote_code: bool = Field(False, description="Run code shipped with the model. Off unless set.")
    controlnet: str | None = Field(None, description="ControlNet weights (hub id or folder) for mode controlnet.")
    loras: list[LoraSpec] = Field(default_factory=list)
    embeddings: list[EmbeddingSpec] = Field(default_factory=list)
    params_b: Annotated[float, Field(gt=0)] | None = Field(
        None, description="Parameter count in billions, to override the memory estimate."
    )
    defaults: GenParams = Field(default_factory=GenParams)
    speed: SpeedSpec = Field(default_factory=SpeedSpec, description="Speed options (docs/spec.md#speed).")

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str | None) -> str | None:
        return GenParams._known_scheduler(value)

    @field_validator("source")
    @classmethod
    def _nonempty_source(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("source must not be empty")
        return value


class FileValues(StrictModel):
    """Values read from a file beside the spec: TXT lines, a CSV column or a JSONL field."""

    file: str = Field(description="Path relative to the spec file.")
    column: str | None = Field(None, description="CSV column name.")
    field: str | None = Field(None, description="JSONL field name.")
    limit: Annotated[int, Field(ge=1)] | None = None


VarValues = list[Scalar] | FileValues


class InputSpec(StrictModel):
    """Input images for img2img, inpaint and ControlNet."""

    images: str | list[str] = Field(description="Image files or globs, relative to the spec file.")
    masks: str | list[str] | None = Field(
        None, description="Inpaint masks, paired with images by file stem (white = repaint)."
    )
    control: Literal["canny", "depth", "image"] | None = Field(
        None,
        description="How to turn each image into a control image: canny edges, a depth map "
        "(images are already depth maps), or the image as is.",
    )
    canny_low: Annotated[int, Field(ge=0, le=255)] = 100
    canny_high: Annotated[int, Field(ge=0, le=255)] = 200


class ClassSpec(GenParams):
    """One class of the dataset: how many images and how they are prompted."""

    target: Annotated[int, Field(ge=0, le=MAX_IMAGES_PER_CLASS)] | None = Field(
        None, description="Number of images to make."
    )
    fill_to: Annotated[int, Field(ge=0, le=MAX_IMAGES_PER_CLASS)] | None = Field(
        None, description="Make images until `existing` plus the made ones reach this count."
    )
    existing: str | None = Field(
        None,
        description="Folder of real images: counted by `fill_to`, compared by the `near_duplicate` filter.",
    )
    prompt: str | list[str] = Field(description="Prompt template(s) with {var} placeholders.")
    vars: dict[str, VarValues] = Field(default_factory=dict)
    expand: Literal["product", "zip"] = Field("product", description="Combine vars as a cartesian product or zip them.")
    sweep: dict[Literal["guidance", "steps", "scheduler", "strength", "model", "size"], list[Any]] = Field(
        default_factory=dict, description="Parameter values spread over the class's images like vars."
    )
    seeds: list[Annotated[int, Field(ge=0, lt=2**63)]] | None = Field(
        None, description="Explicit seeds, used in order instead of derived ones (target defaults to their count)."
    )
    seed_key: str | None = Field(
        None, description="Seed stream name (defaults to the class name): classes sharing one share seeds."
    )
    input: InputSpec | None = None
    label: str | None = Field(None, description="Label for exports (metadata: changes no pixels).")
    description: str | None = None
    replace_rejected: bool | None = Field(None, description="Override `stages.replace_rejected` for this class.")

    @model_validator(mode="after")
    def _count_given(self) -> ClassSpec:
        given = [k for k in ("target", "fill_to") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError("give either target or fill_to, not both")
        if self.fill_to is not None and self.existing is None:
            raise ValueError("fill_to needs `existing`: the folder whose images count toward it")
        if not given and self.seeds is None:
            raise ValueError("give target (a number of images), fill_to with existing, or seeds")
        if self.expand == "zip":
            lengths = {k: len(v) for k, v in self.vars.items() if isinstance(v, list)}
            if len(set(lengths.values())) > 1:
                raise ValueError(f"expand: zip needs vars of equal length, got {lengths}")
        return self


class ClassesFrom(StrictModel):
    """One class per row of a file, e.g. the food seed's CSV of dish titles."""

    file: str = Field(description="CSV, TXT or JSONL file relative to the spec.")
    name: str | None = Field(None, description="Column / field holding the class name (TXT: the line).")
    limit: Annotated[int, Field(ge=1)] | None = None
    template: dict[str, Any] = Field(description="A class spec; each row's columns are vars available as {column}.")


class Budget(StrictModel):
    vram_gb: Annotated[float, Field(gt=0)] | None = Field(None, description="Memory per GPU to plan for.")
    ram_gb: Annotated[float, Field(gt=0)] | None = Field(
        None, description="Host memory to plan for (CPU runs, offload)."
    )
    devices: Literal["auto", "cpu"] | list[Annotated[int, Field(ge=0)]] = "auto"
    max_batch: Annotated[int, Field(ge=1, le=1024)] = 8
    tune_batch: bool = Field(
        False,
        description=(
            "Measure the first calls at the planned batch size, half and a quarter of it, and keep the "
            "fastest for the rest of the run (recorded in the run). Off: every call at the planned size, "
            "so a plan gives the same bytes every time."
        ),
    )
    workers: Annotated[int, Field(ge=1, le=64)] | None = Field(
        None, description="CPU worker processes (default 1); GPUs get one worker each."
    )
    strategy: Literal["auto", "none", "attention_slicing", "vae_tiling", "model_offload", "sequential_offload"] = "auto"
    gpus_per_actor: Annotated[float, Field(gt=0, le=1)] | None = Field(
        None, description="Ray executor: the share of a GPU each actor takes (0.5: two actors per GPU); default 1."
    )
    shared_storage: bool = Field(
        False,
        description="Ray executor: every node mounts the output root at the same path, so actors write "
        "the image files themselves (see docs/ray.md).",
    )
    driver_lane: bool = Field(
        True,
        description="Ray executor, CPU plans on a local Ray: the driver generates batches while Ray and "
        "its actors start, and stops once every actor generates (see docs/ray.md). Off: actors only.",
    )


class CaptionsStage(StrictModel):
    """Caption variations from a causal language model, one generation per variation; a class
    prompt that uses ``{caption}`` makes its images from them."""

    model: str = Field("google/gemma-3-1b-it", description="A causal language model (hub id or folder).")
    revision: str | None = Field(None, description="Hub revision of the model (not for folders).")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: float16 on CUDA, float32 on CPU."
    )
    trust_remote_code: bool = False
    text: str = Field("{class}", description="The source text per class: {class} and {label} are filled in.")
    variations: Annotated[int, Field(ge=1, le=32)] = Field(3, description="Captions per source text.")
    instruction: str = Field(
        'Write one new caption for a photo of this dish or drink: "{text}". '
        "Stay faithful to the original concept, but vary the ingredients, the style or the preparation. "
        "Answer with the caption only, in one sentence.",
        description="The request to the model; {text} is the source text.",
    )
    max_new_tokens: Annotated[int, Field(ge=1, le=2048)] = 64
    temperature: Annotated[float, Field(ge=0.0, le=5.0)] = Field(0.8, description="0: greedy.")
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Field(ge=0, le=10_000)] = Field(0, description="0: off.")
    seed: int = Field(0, description="Base seed; each caption's seed comes from its text and variation.")
    batch_size: Annotated[int, Field(ge=1, le=256)] | None = Field(
        None, description="Captions per generate call; default from the budget's max_batch."
    )


class SegmentStage(StrictModel):
    """Text-prompted segmentation of every image (Lang-SAM: Grounding DINO boxes, SAM masks)."""

    detector: str = Field("IDEA-Research/grounding-dino-base", description="Grounding DINO weights (hub id or folder).")
    detector_revision: str | None = Field(None, description="Hub revision of the detector (not for folders).")
    segmenter: str = Field("facebook/sam-vit-base", description="SAM weights (hub id or folder).")
    segmenter_revision: str | None = Field(None, description="Hub revision of the segmenter (not for folders).")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: float16 on CUDA, float32 on CPU."
    )
    trust_remote_code: bool = False
    text: str = Field("{class}", description="What to find, per class: {class} and {label} are filled in.")
    box_threshold: Annotated[float, Field(ge=0, le=1)] = 0.3
    text_threshold: Annotated[float, Field(ge=0, le=1)] = 0.25
    max_boxes: Annotated[int, Field(ge=1, le=1000)] | None = Field(None, description="Keep the best N boxes.")
    min_area: Annotated[float, Field(ge=0, le=1)] = Field(0.0, description="Drop masks under this image fraction.")
    max_area: Annotated[float, Field(ge=0, le=1)] = Field(1.0, description="Drop masks over this image fraction.")
    dedup_iou: Annotated[float, Field(ge=0, le=1)] = Field(
        0.7, description="Drop a mask overlapping a better one above this IoU."
    )
    merged_cover: Annotated[float, Field(ge=0, le=1)] = 0.8
    merged_fill: Annotated[float, Field(ge=0, le=1)] = 0.6
    merged_min_parts: Annotated[int, Field(ge=2, le=100)] = 2
    contained: Annotated[float, Field(ge=0, le=1)] = Field(
        0.9, description="Drop a mask lying this much inside a larger kept one."
    )
    batch_size: Annotated[int, Field(ge=1, le=256)] | None = Field(
        None, description="Images per detector and segmenter call; default from the budget's max_batch."
    )

    @model_validator(mode="after")
    def _areas(self) -> SegmentStage:
        if self.min_area > self.max_area:
            raise ValueError(f"min_area ({self.min_area}) is above max_area ({self.max_area})")
        return self


class ThresholdFilter(StrictModel):
    min: float | None = None
    max: float | None = None


class ClipScoreFilter(StrictModel):
    """Cosine similarity between CLIP's image and text embeddings of an image and its prompt
    (raw cosine in [-1, 1]: CLIPScore without its 100x scale and clipping at 0)."""

    model: str = Field("openai/clip-vit-base-patch32", description="A CLIP checkpoint (hub id or folder).")
    revision: str | None = Field(None, description="Hub revision of the model (not for folders).")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: float16 on CUDA, float32 on CPU."
    )
    min: Annotated[float, Field(ge=-1, le=1)] | None = Field(None, description="Reject below this cosine.")
    max: Annotated[float, Field(ge=-1, le=1)] | None = Field(None, description="Reject above this cosine.")
    batch_size: Annotated[int, Field(ge=1, le=1024)] | None = Field(
        None, description="Images per CLIP call; default from the budget's max_batch."
    )

    @model_validator(mode="after")
    def _bounds(self) -> ClipScoreFilter:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class NearDuplicateFilter(StrictModel):
    """A perceptual hash per image; an image within `max_hamming` bits of an earlier kept image of
    its class (by unit index) or of an image in the class's `existing:` folder is a duplicate."""

    max_hamming: Annotated[int, Field(ge=0, le=64)] = Field(4, description="Bits (of 64) that still count as equal.")
    hash: Literal["phash", "dhash"] = Field("phash", description="imagehash's perceptual hash or difference hash.")


class BlankFilter(StrictModel):
    """Flat images: the standard deviation of the gray image (0-255) at or below `max_std`."""

    max_std: Annotated[float, Field(ge=0, le=255)] = Field(2.0, description="Gray levels (0-255).")


class ClassifierFilter(StrictModel):
    model: str = Field("builtin:digits-classifier", description="Classifier that checks the prompted class.")
    min_confidence: Annotated[float, Field(ge=0, le=1)] = 0.0


class FilterSpec(StrictModel):
    """Exactly one filter per list entry."""

    clip_score: ClipScoreFilter | None = None
    near_duplicate: NearDuplicateFilter | None = None
    blank: BlankFilter | None = None
    classifier: ClassifierFilter | None = None
    sharpness: ThresholdFilter | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> FilterSpec:
        chosen = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError(
                f"each filter entry names exactly one filter ({', '.join(type(self).model_fields)}), got {len(chosen)}"
            )
        return self

    @property
    def kind(self) -> str:
        return next(n for n in type(self).model_fields if getattr(self, n) is not None)

    @property
    def config(self) -> Any:
        return getattr(self, self.kind)


class ReviewStage(StrictModel):
    report: bool = True
    grid_per_class: Annotated[int, Field(ge=1, le=1000)] = 64


class Stages(StrictModel):
    captions: CaptionsStage | None = None
    segment: SegmentStage | None = None
    filters: list[FilterSpec] = Field(default_factory=list)
    replace_rejected: bool = Field(
        False,
        description="Count only images no filter or review rejected toward each target, and plan new "
        "units (new seeds) to replace the rejected ones; a class's own `replace_rejected` overrides.",
    )
    review: ReviewStage | None = None

    @model_validator(mode="after")
    def _one_per_kind(self) -> Stages:
        kinds = [f.kind for f in self.filters]
        twice = sorted({k for k in kinds if kinds.count(k) > 1})
        if twice:
            raise ValueError(f"each filter may appear once in `filters`, {', '.join(twice)} appears more often")
        return self


class Spec(StrictModel):
    """A dataset spec (version 1)."""

    version: Literal[1] = Field(description="Spec language version.")
    dataset: str = Field(description="Dataset name.")
    description: str | None = None
    output: str = Field("data/synthetic", description="Output root, relative to the spec file.")
    models: dict[str, ModelSpec] = Field(description="Named models.")
    defaults: Defaults = Field(default_factory=Defaults)
    budget: Budget = Field(default_factory=Budget)
    vars: dict[str, VarValues] = Field(default_factory=dict, description="Vars shared by every class.")
    classes: dict[ClassName, ClassSpec] = Field(default_factory=dict)
    classes_from: ClassesFrom | None = None
    profiles: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Named overlays merged onto the spec with --profile."
    )
    stages: Stages = Field(default_factory=Stages)

    @field_validator("dataset")
    @classmethod
    def _dataset_name(cls, value: str) -> str:
        return _check_name(value, "dataset name")

    @field_validator("models")
    @classmethod
    def _some_model(cls, value: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        if not value:
            raise ValueError("define at least one model")
        return value
