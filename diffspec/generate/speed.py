"""Apply a model's speed options (`models.<m>.speed`) to a loaded pipeline.

Order matters and follows diffusers' advice: memory format first (it moves weights), then the
attention backend and the step cache (both install processors or hooks on the denoiser), and
``torch.compile`` last, so that it traces the model as it will run.

Which options change pixels, and so the fingerprint, is decided in
:mod:`diffspec.tables.speed`; this module only makes them happen and fails with a
``GenerationError`` naming the model and the option when this machine cannot. Per call,
:meth:`SpeedRuntime.before_call` resets the step cache (a cache's state must never carry from
one batch into the next, even after a failed call) and re-lays MagCache's ratios over the
call's step count.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from typing import Any

import torch

from diffspec.errors import GenerationError
from diffspec.plan.unit import ModelRef, PipelineKey, SpeedOptions
from diffspec.tables.speed import BATCH_COUPLED_CACHES, CACHE_CLASSES, family_problems, mode_problem

log = logging.getLogger(__name__)


def denoiser_of(pipe: Any) -> Any:
    """The model the denoising loop calls each step: the transformer or the UNet."""
    target = getattr(pipe, "decoder_pipe", None) or pipe  # Kandinsky: the decoder's UNet
    for name in ("transformer", "unet"):
        module = getattr(target, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    return None


class SpeedRuntime:
    """The speed options applied to one pipeline, and what each pipeline call must do about them."""

    def __init__(self, pipe: Any, model: ModelRef, family: str, mode: str, device: str) -> None:
        self.pipe = pipe
        self.model = model
        self.options: SpeedOptions = model.speed
        self.family = family
        self.device = device
        self.denoiser: Any = denoiser_of(pipe)
        self._cache_steps: int | None = None  # the step count MagCache's ratios are laid over
        options = self.options
        if not options:
            return
        # The spec's checks run at validate time; these repeat them for Python API users who
        # build a ModelRef by hand, so they get the same message instead of a silent no-op.
        refused = family_problems(family, options.attention, options.cache)
        if refused:
            key, message = refused[0]
            raise GenerationError(f"model {model.name!r}: speed.{key}: {message}")
        if (why := mode_problem(options.cache, mode)) is not None:
            raise GenerationError(f"model {model.name!r}: speed.cache: {why}")
        if self.denoiser is None:
            raise GenerationError(
                f"model {model.name!r}: speed options need a pipeline with a `transformer` or `unet`; "
                f"{type(pipe).__name__} has neither"
            )
        if options.channels_last:
            self._channels_last()
        if options.attention is not None:
            self._attention(options.attention)
        if options.cache is not None and options.cache != "magcache":
            self._enable_cache(self._cache_config(steps=None))  # magcache waits for the step count
        if options.compile is not None:
            self._compile(dict(options.compile))

    @property
    def batch_coupled(self) -> bool:
        """Whether the cache decides from the whole batch: then each image gets its own call."""
        return self.options.cache in BATCH_COUPLED_CACHES

    def describe(self) -> dict[str, Any]:
        """What was applied, for the run's load event."""
        return self.options.to_dict()

    # ------------------------------------------------------------------ per call

    def before_call(self, key: PipelineKey) -> None:
        if self.options.cache is None:
            return
        if self.options.cache == "magcache":
            steps = int(key.steps)  # txt2img or controlnet: the run starts at step 0 (mode_problem)
            if steps != self._cache_steps:
                if self._cache_steps is not None:
                    self.denoiser.disable_cache()
                self._enable_cache(self._cache_config(steps=steps))
                self._cache_steps = steps
        self.denoiser._reset_stateful_cache()

    # ------------------------------------------------------------------ options

    def _fail(self, option: str, why: str) -> GenerationError:
        return GenerationError(f"model {self.model.name!r}: speed.{option}: {why}")

    def _channels_last(self) -> None:
        """Convolution weights in NHWC: faster convolutions on recent GPUs and oneDNN. Applied to
        every component with a 2-D convolution (the UNet, the VAE, a ControlNet); a transformer
        denoiser has none, so for FLUX it is the VAE that gains."""
        moved = []
        for name, component in self.pipe.components.items():
            if isinstance(component, torch.nn.Module) and any(
                isinstance(m, torch.nn.Conv2d) for m in component.modules()
            ):
                component.to(memory_format=torch.channels_last)
                moved.append(name)
        if not moved:
            raise self._fail("channels_last", "the pipeline has no convolution model to lay out channels-last")

    def _denoisers(self) -> list[Any]:
        controlnet = getattr(self.pipe, "controlnet", None)
        return [self.denoiser] + ([controlnet] if isinstance(controlnet, torch.nn.Module) else [])

    def _attention(self, name: str) -> None:
        from diffusers.models.attention_dispatch import (
            AttentionBackendName,
            _AttentionBackendRegistry,
            dispatch_attention_fn,
        )

        # set_attention_backend also makes the backend the process-wide default, which a model
        # loaded later in this process (without the option) would silently inherit: restore it.
        previous = _AttentionBackendRegistry._active_backend
        try:
            for module in self._denoisers():
                module.set_attention_backend(name)
            took = sum(
                1
                for m in self.denoiser.modules()
                if getattr(getattr(m, "processor", None), "_attention_backend", None) == AttentionBackendName(name)
            )
            if took == 0:
                raise self._fail(
                    "attention", f"no attention layer of {type(self.denoiser).__name__} uses diffusers' dispatcher"
                )
            # A few microseconds here turn "this kernel does not run on this device or dtype" into a
            # load-time error instead of a failure of every batch.
            dtype = self.denoiser.dtype
            probe = torch.randn(1, 8, 2, 64, dtype=dtype, device=self.denoiser.device)
            dispatch_attention_fn(probe, probe, probe, backend=AttentionBackendName(name))
        except GenerationError:
            raise
        except Exception as exc:
            raise self._fail(
                "attention",
                f"backend {name!r} cannot run here ({self.device}, {str(self.denoiser.dtype).removeprefix('torch.')}): "
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
            ) from None
        finally:
            _AttentionBackendRegistry.set_active_backend(previous)

    def _cache_config(self, steps: int | None) -> Any:
        import diffusers

        kind = self.options.cache
        assert kind is not None
        params = dict(self.options.cache_params)
        cls = getattr(diffusers, CACHE_CLASSES[kind])
        if kind == "first_block":
            return cls(threshold=float(params["threshold"]))
        if kind == "taylorseer":
            return cls(
                cache_interval=int(params["cache_interval"]),
                disable_cache_before_step=int(params["disable_cache_before_step"]),
                disable_cache_after_step=params["disable_cache_after_step"],
                max_order=int(params["max_order"]),
                taylor_factors_dtype=getattr(torch, str(params["factors_dtype"])),
                use_lite_mode=bool(params["lite"]),
            )
        if kind == "magcache":
            from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

            ratios = params["ratios"]
            return cls(
                threshold=float(params["threshold"]),
                max_skip_steps=int(params["max_skip_steps"]),
                retention_ratio=float(params["retention_ratio"]),
                num_inference_steps=int(steps or 1),
                mag_ratios=FLUX_MAG_RATIOS.clone() if ratios == "flux" else torch.tensor([float(r) for r in ratios]),
            )
        if kind == "pyramid_attention_broadcast":
            low, high = params["timestep_range"]
            pipe = self.pipe
            return cls(
                spatial_attention_block_skip_range=int(params["block_skip_range"]),
                spatial_attention_timestep_skip_range=(int(low), int(high)),
                current_timestep_callback=lambda: pipe.current_timestep,
            )
        raise self._fail("cache", f"unknown step cache {kind!r}")  # pragma: no cover - the spec refuses it

    def _enable_cache(self, config: Any) -> None:
        from diffusers.models.cache_utils import CacheMixin

        if not isinstance(self.denoiser, CacheMixin):
            raise self._fail(
                "cache", f"{type(self.denoiser).__name__} has no step-cache support (diffusers' CacheMixin)"
            )
        try:
            self.denoiser.enable_cache(config)
        except Exception as exc:
            raise self._fail("cache", f"{self.options.cache} cannot be enabled: {exc}") from None

    def _compile(self, options: dict[str, Any]) -> None:
        backend = str(options["backend"])
        on_cuda = torch.device(self.device).type == "cuda"
        # Inductor compiles C++ on a CPU and Triton kernels on a GPU; without them the first
        # batch would fail deep inside torch: say so at load time.
        if backend == "inductor" and not on_cuda and not (shutil.which("c++") or shutil.which("g++")):
            raise self._fail("compile", "torch.compile's inductor backend needs a C++ compiler (c++ or g++) on a CPU")
        if backend == "inductor" and on_cuda and importlib.util.find_spec("triton") is None:
            raise self._fail("compile", "torch.compile's inductor backend needs triton on a GPU (pip install triton)")
        mode = options["mode"]
        kwargs: dict[str, Any] = {
            "mode": None if mode == "default" else mode,
            "backend": backend,
            "fullgraph": bool(options["fullgraph"]),
            "dynamic": options["dynamic"],
        }
        if backend != "inductor":
            kwargs.pop("mode")  # modes are inductor's: other backends refuse them
        try:
            if options["regional"]:
                self.denoiser.compile_repeated_blocks(**kwargs)
            else:
                self.denoiser.compile(**kwargs)
        except Exception as exc:
            raise self._fail("compile", f"{type(exc).__name__}: {exc}") from None
        log.info("model %s: %s compiled (%s)", self.model.name, type(self.denoiser).__name__, options)
