"""The one small interface the runner uses: a loaded pipeline that turns units into images.

::

    backend = Backend(unit.key, device="cpu", strategy="none")
    images = backend.generate(units)          # units share one PipelineKey: one pipeline call
    backend.scheduler_config(unit.key)        # the resulting scheduler config, for the catalog
    backend.close()

Reproducibility rules:

* one ``torch.Generator(device="cpu").manual_seed(unit.seed)`` per image, passed as a list,
  so a seed is the same noise on any device and an image does not depend on its place in
  the batch (nor on its batch mates: text is encoded per prompt, padded to a fixed length);
* for SD and SDXL each distinct text is encoded once per loaded pipeline and reused across
  batches (``diffspec.generate.text_cache``), the same tensors the pipeline would compute;
* a fresh scheduler per call, built from the cached config of (scheduler name, kwargs), so no
  scheduler state leaks from one call into the next.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import inspect
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import PIL.Image
import torch

from diffspec.errors import GenerationError
from diffspec.generate.control import control_image, load_mask, load_rgb
from diffspec.generate.loading import load_pipeline, resolve_family
from diffspec.generate.memory import apply_strategy, is_out_of_memory
from diffspec.generate.prompts import has_weighting, is_weighted, parse_a1111, plain_text, unescape
from diffspec.generate.schedulers import make_scheduler
from diffspec.generate.speed import SpeedRuntime
from diffspec.generate.text_cache import TextEmbedding, TextEmbeddingCache
from diffspec.plan.unit import ModelRef, PipelineKey, WorkUnit
from diffspec.tables.families import (
    KANDINSKY_PRIOR_GUIDANCE,
    KANDINSKY_PRIOR_STEPS,
    PROMPT_WEIGHTING_FAMILIES,
    check_size,
    guidance_applies,
    supports_negative_prompt,
    supports_prompt_weighting,
)

log = logging.getLogger(__name__)

LoadKey = tuple[ModelRef, str]


@dataclass(frozen=True)
class GeneratedImage:
    fingerprint: str
    image: PIL.Image.Image
    seconds: float  # wall time of the pipeline call divided by the batch size


def _is_compile_error(exc: BaseException) -> bool:
    """An error raised by torch.compile's machinery (dynamo or inductor), known by its module so
    that torch._dynamo (1.4 s to import) is never imported just to name its exception class."""
    return any(c.__module__.startswith(("torch._dynamo", "torch._inductor")) for c in type(exc).__mro__)


def _as_key(value: PipelineKey | WorkUnit | tuple) -> PipelineKey:
    if isinstance(value, WorkUnit):
        return value.key
    if isinstance(value, PipelineKey):
        return value
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], ModelRef):
        model, mode = value
        return PipelineKey(
            model=model, mode=mode, scheduler="default", scheduler_kwargs=(), width=0, height=0, steps=1, guidance=0.0
        )
    raise TypeError(f"Backend needs a PipelineKey, a WorkUnit or a load key tuple, got {type(value).__name__}")


class Backend:
    """A pipeline loaded once for one (model, mode), driven by work units (control images per call)."""

    def __init__(
        self,
        load_key_unit_or_key: PipelineKey | WorkUnit | LoadKey,
        device: str = "cpu",
        strategy: str = "none",
        dtype: str | None = None,
    ) -> None:
        key = _as_key(load_key_unit_or_key)
        self.model: ModelRef = key.model
        self.mode: str = key.mode
        self.load_key: LoadKey = key.load_key()
        self.device = device
        self.family = "builtin" if key.model.source.startswith("builtin:") else resolve_family(key.model)
        self.pipe: Any = load_pipeline(key, device=device, dtype=dtype, place=False)
        self.strategy = strategy
        self.memory_effect = apply_strategy(self.pipe, strategy, device)
        # After placement: channels-last and compile act on the weights where they will run.
        self.speed = SpeedRuntime(self.pipe, key.model, self.family, self.mode, device)
        base = self.pipe.scheduler
        self._base_scheduler_config = {**dict(base.config), "_class_name": type(base).__name__}
        self._schedulers: dict[tuple[str, tuple], tuple[Any, dict[str, Any]]] = {}
        self._compel: tuple[Any, Any] | None = None
        self._texts = TextEmbeddingCache(self._encode_text)
        self._warned: set[str] = set()
        self._call_params = self._parameters_of_call()

    # ------------------------------------------------------------------ public API

    def generate(self, units: Sequence[WorkUnit]) -> list[GeneratedImage]:
        """Make one image per unit, in one pipeline call. All units must share one key."""
        if not units:
            return []
        key = units[0].key
        for unit in units[1:]:
            if unit.key != key:
                raise ValueError("Backend.generate: all units of a call must share one PipelineKey")
        if key.load_key() != self.load_key:
            raise ValueError(
                "Backend.generate: these units need another model/mode than this backend "
                f"loaded ({key.model.name}, {key.mode}); make another Backend"
            )
        if self.pipe is None:
            raise GenerationError("this backend was closed")
        check_size(self.family, key.width, key.height)
        start = time.perf_counter()
        # A cache that decides from the whole batch would make an image depend on its batch
        # mates (tables/speed.py BATCH_COUPLED_CACHES): one image per call keeps it its own.
        chunks = [[u] for u in units] if self.speed.batch_coupled else [list(units)]
        images = [image for chunk in chunks for image in self._call(chunk, key)]
        elapsed = time.perf_counter() - start
        if len(images) != len(units):
            raise GenerationError(f"the pipeline returned {len(images)} images for {len(units)} units")
        for image in images:
            if image.size != (key.width, key.height):  # never hand back a silently resized image
                raise GenerationError(
                    f"{type(self.pipe).__name__} made a {image.size[0]}x{image.size[1]} image for a "
                    f"{key.width}x{key.height} request (model {self.model.name!r})"
                )
        per_image = elapsed / len(units)
        return [
            GeneratedImage(unit.fingerprint, image if image.mode == "RGB" else image.convert("RGB"), per_image)
            for unit, image in zip(units, images)
        ]

    def _call(self, units: list[WorkUnit], key: PipelineKey) -> list[PIL.Image.Image]:
        """One pipeline call for ``units``, with a fresh scheduler and a reset step cache."""
        self._use_scheduler(key)
        self.speed.before_call(key)
        generators = [torch.Generator(device="cpu").manual_seed(int(u.seed)) for u in units]
        try:
            with torch.no_grad():
                if self.family == "kandinsky":
                    return self._run_kandinsky(units, key, generators)
                kwargs = self._call_kwargs(units, key, generators)
                with self._deterministic_vae_sampling():
                    return list(self.pipe(**kwargs).images)
        except ValueError as exc:
            raise GenerationError(
                f"{type(self.pipe).__name__} rejected the call for model {self.model.name!r} "
                f"({self.mode}, {key.width}x{key.height}, {key.steps} steps): {exc}"
            ) from exc
        except Exception as exc:
            if self.model.speed.compile is None or not _is_compile_error(exc) or is_out_of_memory(exc):
                raise  # an out-of-memory error must reach the runner as one: it halves the batch
            # A compile failure surfaces at the first call, deep in torch: name the option.
            raise GenerationError(
                f"model {self.model.name!r}: speed.compile: torch.compile failed on the first call "
                f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); "
                "try `compile: {backend: eager}` to check the graph, or remove `compile`"
            ) from None

    def scheduler_config(self, key: PipelineKey) -> dict[str, Any]:
        """The config (with ``_class_name``) of the scheduler ``key`` runs with."""
        return dict(self._scheduler_for(key)[1])

    def set_strategy(self, strategy: str) -> None:
        if self.pipe is None:
            raise GenerationError("this backend was closed")
        self.memory_effect = apply_strategy(self.pipe, strategy, self.device)
        self.strategy = strategy

    def close(self) -> None:
        """Free the pipeline's memory."""
        pipe, self.pipe = self.pipe, None
        self._compel = None
        self._texts.clear()
        if pipe is not None:
            with contextlib.suppress(Exception):
                pipe.remove_all_hooks()
            del pipe
        gc.collect()
        if torch.device(self.device).type == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ schedulers

    def _scheduler_for(self, key: PipelineKey) -> tuple[Any, dict[str, Any]]:
        cache_key = (key.scheduler, tuple(sorted(key.scheduler_kwargs)))
        if cache_key not in self._schedulers:
            self._schedulers[cache_key] = make_scheduler(
                key.scheduler, self._base_scheduler_config, dict(key.scheduler_kwargs)
            )
        return self._schedulers[cache_key]

    def _use_scheduler(self, key: PipelineKey) -> None:
        template, _ = self._scheduler_for(key)
        # Fresh state every call (schedulers count their steps); a copy of the never-used
        # template is that state, 10x cheaper than from_config's validation (3 ms a batch).
        scheduler = copy.deepcopy(template)
        self.pipe.scheduler = scheduler
        decoder = getattr(self.pipe, "decoder_pipe", None)  # Kandinsky combined pipelines
        if decoder is not None:
            decoder.scheduler = scheduler

    # ------------------------------------------------------------------ call building

    def _parameters_of_call(self) -> frozenset[str]:
        target = getattr(self.pipe, "decoder_pipe", None) or self.pipe
        params = set(inspect.signature(target.__call__).parameters)
        if target is not self.pipe:
            params |= set(inspect.signature(self.pipe.__call__).parameters)
        return frozenset(params)

    def _warn_once(self, tag: str, message: str, *args: Any) -> None:
        if tag not in self._warned:
            self._warned.add(tag)
            log.warning(message, *args)

    def _input_kwargs(self, units: Sequence[WorkUnit], key: PipelineKey) -> dict[str, Any]:
        width, height = key.width, key.height
        params = self._call_params
        kwargs: dict[str, Any] = {}
        if "height" in params and "width" in params:
            kwargs["height"], kwargs["width"] = height, width
        if self.mode in ("img2img", "inpaint", "controlnet"):
            for unit in units:
                if not unit.input_image:
                    raise GenerationError(
                        f"unit {unit.class_name}#{unit.index} ({unit.fingerprint[:12]}) has no input image, "
                        f"which mode {self.mode} needs (set `input.images` in its class)"
                    )
        if self.mode in ("img2img", "inpaint"):
            kwargs["image"] = [load_rgb(u.input_image, width, height) for u in units]
            if key.strength is not None:
                if "strength" in params:
                    kwargs["strength"] = float(key.strength)
                elif key.strength != 1.0:
                    self._warn_once(
                        "strength",
                        "%s has no `strength`: it always repaints the masked area fully; strength %s is ignored",
                        type(self.pipe).__name__,
                        key.strength,
                    )
        if self.mode == "inpaint":
            for unit in units:
                if not unit.mask_image:
                    raise GenerationError(
                        f"unit {unit.class_name}#{unit.index} ({unit.fingerprint[:12]}) has no mask image, "
                        "which mode inpaint needs (set `input.masks` in its class)"
                    )
            kwargs["mask_image"] = [load_mask(u.mask_image, width, height) for u in units]
        if self.mode == "controlnet":
            controls = [control_image(u.input_image, key.control, width, height) for u in units]
            kwargs["control_image" if "control_image" in params else "image"] = controls
            if key.conditioning_scale is not None:
                kwargs["controlnet_conditioning_scale"] = float(key.conditioning_scale)
        return kwargs

    def _check_prompt_syntax(self, texts: Sequence[str]) -> None:
        if supports_prompt_weighting(self.family):
            for text in texts:
                parse_a1111(text)  # raises on unbalanced brackets
            return
        for text in texts:
            if has_weighting(text):
                raise GenerationError(
                    f"prompt weighting like {text!r} is supported for families "
                    f"{', '.join(sorted(PROMPT_WEIGHTING_FAMILIES))} only, not {self.family!r} "
                    f"(model {self.model.name!r}); remove the brackets or write literal ones as \\( \\) \\[ \\]"
                )

    def _do_cfg(self, key: PipelineKey) -> bool:
        unet = getattr(self.pipe, "unet", None)
        distilled = unet is not None and getattr(unet.config, "time_cond_proj_dim", None) is not None
        return guidance_applies(self.family, key.guidance, distilled=distilled)

    def _text_kwargs(self, units: Sequence[WorkUnit], key: PipelineKey) -> dict[str, Any]:
        prompts = [u.prompt for u in units]
        negatives = [u.negative or "" for u in units]
        do_cfg = self._do_cfg(key)
        self._check_prompt_syntax(prompts + (negatives if do_cfg else []))
        if not supports_negative_prompt(self.family):
            if any(negatives):
                self._warn_once(
                    "negative",
                    "%s models take no negative prompt (guidance-distilled); the negative prompt is ignored",
                    self.family,
                )
            return {"prompt": [unescape(p) for p in prompts]}
        if self.family not in PROMPT_WEIGHTING_FAMILIES:
            return {"prompt": [unescape(p) for p in prompts], "negative_prompt": [unescape(n) for n in negatives]}
        return self._sd_embeddings(prompts, negatives, do_cfg)

    def _call_kwargs(self, units: Sequence[WorkUnit], key: PipelineKey, generators: list) -> dict[str, Any]:
        kwargs = self._text_kwargs(units, key)
        kwargs.update(self._input_kwargs(units, key))
        kwargs.update(
            num_inference_steps=int(key.steps),
            guidance_scale=float(key.guidance),
            generator=generators,
            output_type="pil",
        )
        return kwargs

    # ------------------------------------------------------------------ prompt weighting (compel)

    def _compel_pair(self) -> tuple[Any, Any]:
        if self._compel is None:
            from compel import Compel, DiffusersTextualInversionManager, ReturnedEmbeddingsType

            ti = DiffusersTextualInversionManager(self.pipe)
            if self.family == "sd":
                first = Compel(
                    tokenizer=self.pipe.tokenizer,
                    text_encoder=self.pipe.text_encoder,
                    textual_inversion_manager=ti,
                    truncate_long_prompts=True,
                )
                self._compel = (first, None)
            else:
                kind = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
                first = Compel(
                    tokenizer=self.pipe.tokenizer,
                    text_encoder=self.pipe.text_encoder,
                    textual_inversion_manager=ti,
                    returned_embeddings_type=kind,
                    truncate_long_prompts=True,
                )
                second = Compel(
                    tokenizer=self.pipe.tokenizer_2,
                    text_encoder=self.pipe.text_encoder_2,
                    returned_embeddings_type=kind,
                    requires_pooled=True,
                    truncate_long_prompts=True,
                )
                self._compel = (first, second)
        return self._compel

    def _compel_embed(self, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weighted embeddings of an A1111-syntax prompt: (embeds, pooled or None)."""
        from compel.prompt_parser import Conjunction, FlattenedPrompt

        fragments = [(piece, float(weight)) for piece, weight in parse_a1111(text)] or [("", 1.0)]
        conjunction = Conjunction([FlattenedPrompt(fragments)])
        first, second = self._compel_pair()
        embeds, _ = first.build_conditioning_tensor_for_conjunction(conjunction)
        if second is None:
            return embeds, None
        embeds_2, _ = second.build_conditioning_tensor_for_conjunction(conjunction)
        pooled = second.conditioning_provider.get_pooled_embeddings([plain_text(text)], device=embeds_2.device)
        return torch.cat([embeds, embeds_2.to(embeds.device)], dim=-1), pooled

    def _encode_text(self, text: str) -> TextEmbedding:
        """One text alone through the pipeline's own ``encode_prompt`` (compel for A1111 weights)."""
        pipe = self.pipe
        device = pipe._execution_device
        dtype = pipe.unet.dtype
        sdxl = self.family == "sdxl"
        if is_weighted(text):
            embeds, pooled = self._compel_embed(text)
        elif sdxl:
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompt=[plain_text(text)], device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
        else:
            embeds, _ = pipe.encode_prompt([plain_text(text)], device, 1, False)
            pooled = None
        return TextEmbedding(
            embeds.to(device=device, dtype=dtype), pooled.to(device=device, dtype=dtype) if sdxl else None
        )

    def _sd_embeddings(self, prompts: list[str], negatives: list[str], do_cfg: bool) -> dict[str, Any]:
        """Per-unit text embeddings for sd/sdxl from the run's cache: each distinct text is
        encoded once (``text_cache``), and a unit's embedding never depends on its batch."""
        sdxl = self.family == "sdxl"
        pos = [self._texts.get(p) for p in prompts]
        out: dict[str, Any] = {"prompt_embeds": torch.cat([e.embeds for e in pos])}
        if sdxl:
            out["pooled_prompt_embeds"] = torch.cat([e.pooled for e in pos])
        if not do_cfg:
            return out
        # SDXL zeroes an absent negative (force_zeros_for_empty_prompt), as its encode_prompt does.
        zero_empty = sdxl and bool(getattr(self.pipe.config, "force_zeros_for_empty_prompt", False))
        neg, neg_pooled = [], []
        for negative, p in zip(negatives, pos):
            if zero_empty and not negative:
                neg.append(torch.zeros_like(p.embeds))
                neg_pooled.append(torch.zeros_like(p.pooled))
                continue
            e = self._texts.get(negative)
            neg.append(e.embeds)
            neg_pooled.append(e.pooled)
        out["negative_prompt_embeds"] = torch.cat(neg)
        if sdxl:
            out["negative_pooled_prompt_embeds"] = torch.cat(neg_pooled)
        return out

    # ------------------------------------------------------------------ family specifics

    @contextlib.contextmanager
    def _deterministic_vae_sampling(self) -> Iterator[None]:
        """SD3's ControlNet pipeline samples the control image's VAE latent with the global RNG,
        which would make images irreproducible; use the latent mean (deterministic and
        independent of the batch) instead."""
        if not (self.family == "sd3" and self.mode == "controlnet"):
            yield
            return
        vae = self.pipe.vae
        original = vae.encode
        shadowed = "encode" in vars(vae)

        def encode(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            dist = getattr(out, "latent_dist", None)
            if dist is not None:
                dist.sample = lambda generator=None: dist.mode()
            return out

        vae.encode = encode
        try:
            yield
        finally:
            if shadowed:
                vae.encode = original
            else:
                del vae.encode  # back to the class method

    def _run_kandinsky(self, units: Sequence[WorkUnit], key: PipelineKey, generators: list) -> list[PIL.Image.Image]:
        """Kandinsky 2.2: prior (text → image embedding), then the decoder.

        The combined pipeline runs the prior once for the whole batch, and with a negative
        prompt it doubles the prior batch, which a per-image generator list cannot follow. So
        the prior runs here in two groups (units without / with a negative prompt; the negative
        half draws from a second generator seeded like the first), and the decoder runs once.
        """
        pipe = self.pipe
        prompts = [unescape(u.prompt) for u in units]
        negatives = [unescape(u.negative or "") for u in units]
        self._check_prompt_syntax([u.prompt for u in units] + [u.negative or "" for u in units])
        embeds: list[torch.Tensor | None] = [None] * len(units)
        negative_embeds: list[torch.Tensor | None] = [None] * len(units)
        groups = (
            [i for i, n in enumerate(negatives) if not n],
            [i for i, n in enumerate(negatives) if n],
        )
        for with_negative, index in enumerate(groups):
            if not index:
                continue
            gens = [generators[i] for i in index]
            if with_negative:
                gens = gens + [torch.Generator(device="cpu").manual_seed(int(units[i].seed)) for i in index]
            image_embeds, zero_embeds = pipe.prior_pipe(
                prompt=[prompts[i] for i in index],
                negative_prompt=[negatives[i] for i in index] if with_negative else None,
                num_inference_steps=KANDINSKY_PRIOR_STEPS,
                guidance_scale=KANDINSKY_PRIOR_GUIDANCE,
                generator=gens,
                output_type="pt",
                return_dict=False,
            )
            for row, i in enumerate(index):
                embeds[i] = image_embeds[row : row + 1]
                negative_embeds[i] = zero_embeds[row : row + 1]
        kwargs = self._input_kwargs(units, key)
        return pipe.decoder_pipe(
            image_embeds=torch.cat(embeds),
            negative_image_embeds=torch.cat(negative_embeds),
            num_inference_steps=int(key.steps),
            guidance_scale=float(key.guidance),
            generator=generators,
            output_type="pil",
            **kwargs,
        ).images
