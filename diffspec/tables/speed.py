"""Speed options (`models.<m>.speed`): what diffusers 0.42 offers, on which families. Torch-free.

`spec` validates names and family support with these tables at `validate` time; `plan` reads
:data:`ATTENTION_BACKENDS` to decide which backends go into the fingerprint; `generate`
applies the options. A test checks the tables against the installed diffusers
(``AttentionBackendName``, ``CacheMixin``), so an upgrade that adds or drops a backend fails
loudly instead of drifting.

The fingerprint rule (docs/determinism.md): an option is in a unit's fingerprint when it
changes the computation itself, and only in the run record when it changes nothing but float
rounding, like the batch size already does.

* step caches skip or extrapolate denoiser work: different pixels, always fingerprinted;
* attention backends that compute exact softmax attention (PyTorch SDPA and its kernels, flex,
  flash, xformers) differ from one another by rounding only (measured 2.4e-6 on tiny FLUX,
  0 of 255 levels): run record. The SageAttention backends quantise Q/K to int8 (and P/V to
  fp8 on some kernels), an approximation: fingerprinted;
* ``torch.compile`` and channels-last memory format reorder float arithmetic only (measured
  2.6e-6 and 2.0e-6 on tiny FLUX, 0 of 255 levels): run record.
"""

from __future__ import annotations

from typing import Literal

#: diffusers 0.42 ``AttentionBackendName`` values → whether the backend computes exact
#: attention (True: differs from native SDPA by rounding only) or an approximation (False).
ATTENTION_BACKENDS: dict[str, bool] = {
    "native": True,
    "_native_cudnn": True,
    "_native_efficient": True,
    "_native_flash": True,
    "_native_math": True,
    "_native_npu": True,
    "_native_xla": True,
    "flex": True,
    "flash": True,
    "flash_hub": True,
    "flash_varlen": True,
    "flash_varlen_hub": True,
    "flash_4_hub": True,
    "_flash_3": True,
    "_flash_varlen_3": True,
    "_flash_3_hub": True,
    "_flash_3_varlen_hub": True,
    "aiter_fa2_hub": True,
    "xformers": True,
    "sage": False,
    "sage_hub": False,
    "sage_blackwell_hub": False,
    "sage_varlen": False,
    "_sage_qk_int8_pv_fp8_cuda": False,
    "_sage_qk_int8_pv_fp8_cuda_sm90": False,
    "_sage_qk_int8_pv_fp16_cuda": False,
    "_sage_qk_int8_pv_fp16_triton": False,
}
ATTENTION_NAMES: tuple[str, ...] = tuple(ATTENTION_BACKENDS)

#: Our step-cache names → the diffusers config class ``enable_cache`` takes.
CACHE_CLASSES: dict[str, str] = {
    "first_block": "FirstBlockCacheConfig",
    "taylorseer": "TaylorSeerCacheConfig",
    "magcache": "MagCacheConfig",
    "pyramid_attention_broadcast": "PyramidAttentionBroadcastConfig",
}
CACHE_NAMES: tuple[str, ...] = tuple(CACHE_CLASSES)

#: Caches whose skip decision is made from the whole batch's activations (First Block Cache
#: compares the batch-mean residual with a threshold): an image would depend on its batch
#: mates, so the backend runs such models one image per pipeline call. The others follow a
#: fixed schedule (TaylorSeer's interval, MagCache's precomputed ratios, PAB's step range).
BATCH_COUPLED_CACHES: frozenset[str] = frozenset({"first_block"})

#: Caches whose schedule is laid out over a full denoising run from step 0 (MagCache's ratios):
#: img2img and inpaint start part-way through the schedule, so the ratios would not line up.
FULL_SCHEDULE_CACHES: frozenset[str] = frozenset({"magcache"})

#: Families whose denoiser diffusers 0.42 can give a step cache (``CacheMixin``) and an
#: attention backend (attention processors that call ``dispatch_attention_fn``). SD3's
#: transformer and every UNet in 0.42 have neither: their attention calls SDPA directly.
CACHE_FAMILIES: frozenset[str] = frozenset({"flux"})
ATTENTION_FAMILIES: frozenset[str] = frozenset({"flux"})

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CompileBackend = Literal["inductor", "cudagraphs", "aot_eager", "eager"]


def family_problems(family: str, attention: str | None, cache: str | None) -> list[tuple[str, str]]:
    """(spec key under ``speed``, message) for each option the family cannot take."""
    problems: list[tuple[str, str]] = []
    if attention is not None and family not in ATTENTION_FAMILIES:
        problems.append(
            (
                "attention",
                f"attention backends need a denoiser whose attention goes through diffusers' dispatcher "
                f"(family {', '.join(sorted(ATTENTION_FAMILIES))} in diffusers 0.42); family {family!r} "
                "calls PyTorch's scaled_dot_product_attention directly, so the option would do nothing. "
                "Remove `attention`",
            )
        )
    if cache is not None and family not in CACHE_FAMILIES:
        problems.append(
            (
                "cache",
                f"step caches (`enable_cache`) exist in diffusers 0.42 for the transformer of family "
                f"{', '.join(sorted(CACHE_FAMILIES))} only, not for family {family!r}. Remove `cache`",
            )
        )
    return problems


def mode_problem(cache: str | None, mode: str) -> str | None:
    """Why `cache` cannot run in `mode`, or None."""
    if cache in FULL_SCHEDULE_CACHES and mode in ("img2img", "inpaint"):
        return (
            f"the {cache} cache lays its precomputed ratios over a full denoising run, and mode {mode} "
            "starts part-way through it; use first_block or taylorseer for img2img and inpaint"
        )
    return None
