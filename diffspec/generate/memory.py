"""Memory strategies: what to turn on when a pipeline does not fit.

Strategies are cumulative, in the order of :data:`STRATEGIES`; each one keeps what the
previous ones turned on:

* ``none`` — the whole pipeline on the device
* ``attention_slicing`` — attention computed in slices
* ``vae_tiling`` — plus VAE tiling and VAE slicing (decode one image at a time, in tiles)
* ``model_offload`` — plus ``enable_model_cpu_offload``: one model on the GPU at a time
* ``sequential_offload`` — plus ``enable_sequential_cpu_offload``: one layer at a time

On a CPU the offload strategies have nothing to offload to: they keep the CPU-side
strategies and log that offloading is a no-op. :func:`escalate` gives the next strategy after
an out-of-memory error (:func:`is_out_of_memory`). This module imports torch lazily so the
planner can use :data:`STRATEGIES` and :func:`escalate` without it.
"""

from __future__ import annotations

import logging
from typing import Any

from diffspec.errors import GenerationError

log = logging.getLogger(__name__)

STRATEGIES: tuple[str, ...] = ("none", "attention_slicing", "vae_tiling", "model_offload", "sequential_offload")

FEATURES: tuple[str, ...] = ("attention_slicing", "vae_tiling", "vae_slicing", "model_offload", "sequential_offload")

_OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory", "failed to allocate")


def escalate(strategy: str) -> str | None:
    """The next, more frugal strategy, or None when there is none left."""
    _check(strategy)
    index = STRATEGIES.index(strategy)
    return STRATEGIES[index + 1] if index + 1 < len(STRATEGIES) else None


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA out-of-memory errors and allocator failures (CPU or GPU)."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        oom_type = getattr(torch.cuda, "OutOfMemoryError", None) or getattr(torch, "OutOfMemoryError", None)
        if oom_type is not None and isinstance(exc, oom_type):
            return True
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return any(marker in text for marker in _OOM_MARKERS)
    return False


def _check(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise GenerationError(f"unknown memory strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")


def _vaes(pipe: Any) -> list[Any]:
    """The image autoencoders of a pipeline (``vae``; Kandinsky's ``movq``)."""
    found = []
    for name in ("vae", "movq"):
        module = getattr(pipe, name, None)
        if module is not None and module not in found:
            found.append(module)
    return found


def _gpu_id(device: str) -> int:
    import torch

    dev = torch.device(device)
    return dev.index if dev.index is not None else 0


def _has_hooks(pipe: Any) -> bool:
    return bool(getattr(pipe, "_offload_gpu_id", None) is not None or getattr(pipe, "_all_hooks", None))


def _reset(pipe: Any) -> None:
    """Undo what a previous strategy turned on."""
    if hasattr(pipe, "disable_attention_slicing"):
        pipe.disable_attention_slicing()
    for vae in _vaes(pipe):
        for method in ("disable_tiling", "disable_slicing"):
            fn = getattr(vae, method, None)
            if callable(fn):
                try:
                    fn()
                except (NotImplementedError, AttributeError):
                    pass
    if _has_hooks(pipe) and hasattr(pipe, "remove_all_hooks"):
        pipe.remove_all_hooks()


def apply_strategy(pipe: Any, strategy: str, device: str) -> dict[str, bool]:
    """Put ``pipe`` on ``device`` under ``strategy``; returns what is in effect.

    The result maps each feature (attention_slicing, vae_tiling, vae_slicing, model_offload,
    sequential_offload) to whether it is on, so callers and tests can see what happened.
    """
    import torch

    _check(strategy)
    level = STRATEGIES.index(strategy)
    on_cpu = torch.device(device).type == "cpu"
    _reset(pipe)
    effect = dict.fromkeys(FEATURES, False)

    if level >= STRATEGIES.index("attention_slicing"):
        pipe.enable_attention_slicing()
        effect["attention_slicing"] = True
    if level >= STRATEGIES.index("vae_tiling"):
        for vae in _vaes(pipe):
            for method, feature in (("enable_tiling", "vae_tiling"), ("enable_slicing", "vae_slicing")):
                fn = getattr(vae, method, None)
                if callable(fn):
                    try:
                        fn()
                        effect[feature] = True
                    except NotImplementedError:
                        log.info("%s does not support %s", type(vae).__name__, feature)
    if level >= STRATEGIES.index("model_offload") and on_cpu:
        log.info(
            "memory strategy %s: offloading is a no-op on CPU (nothing to offload to); "
            "attention slicing and VAE tiling stay on",
            strategy,
        )
        pipe.to(device)
    elif strategy == "model_offload":
        pipe.enable_model_cpu_offload(gpu_id=_gpu_id(device))
        effect["model_offload"] = True
    elif strategy == "sequential_offload":
        pipe.enable_sequential_cpu_offload(gpu_id=_gpu_id(device))
        effect["sequential_offload"] = True
    else:
        pipe.to(device)
    log.info("memory strategy %s on %s: %s", strategy, device, {k: v for k, v in effect.items() if v})
    return effect
