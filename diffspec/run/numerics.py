"""CPU numerics that do not depend on how many threads a worker has.

PyTorch picks the kernel of a float32 CPU convolution by a heuristic that looks at the thread
count: a 1x1 convolution on fewer than 16 images runs on oneDNN when torch has more than one
thread and on the native kernel when it has one (ATen ``Convolution.cpp``, ``use_mkldnn``).
The two kernels round differently (~1e-6), and after 8-bit quantisation a few pixels of some
images differ by one level: one worker with two threads and two workers with one thread each
would make different bytes for the same unit.

While diffspec generates on a CPU every float32 inference ``conv2d`` runs on oneDNN, whose
results do not depend on the thread count (measured: identical bytes with 1 and 2 threads; see
docs/determinism.md): the calls ATen sends to oneDNN whatever the thread count go through
untouched, and the others (a 1x1 kernel on fewer than 16 images, a single image) are routed to
``torch.mkldnn_convolution`` with their tensors as they are, so a routed call makes exactly
what ATen's own call makes with two threads. Nothing changes on a GPU, with autograd on, or
when oneDNN is unavailable or switched off. ``DIFFSPEC_CPU_CONV=native`` turns the routing off.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

_lock = threading.Lock()
_depth = 0
_original: Any = None


def _wanted(device: str) -> bool:
    if not device.startswith("cpu") or os.environ.get("DIFFSPEC_CPU_CONV", "").lower() == "native":
        return False
    import torch

    return bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def _make_conv2d(original: Any) -> Any:
    import torch
    from torch.nn.modules.utils import _pair

    def conv2d(
        input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1
    ) -> Any:
        # ATen's choice depends on the thread count only for a 1x1 kernel on fewer than 16
        # images, and its native kernel serves only single images (Convolution.cpp,
        # ``use_mkldnn``): any other call, which ATen sends to oneDNN whatever the threads,
        # goes straight through. This test is the whole cost of the wrapper on most calls
        # (a full one was ~8% of a batch-8 step of a tiny UNet).
        shape = input.shape
        if len(shape) == 4 and shape[0] > 1 and (shape[0] >= 16 or weight.shape[-1] != 1 or weight.shape[-2] != 1):
            return original(input, weight, bias, stride, padding, dilation, groups)
        if (
            not torch.is_grad_enabled()
            and input.device.type == "cpu"
            and input.dtype == torch.float32
            and weight.dtype == torch.float32
            and input.dim() == 4
            and not isinstance(padding, str)
            and torch.backends.mkldnn.enabled
            and (bias is None or bias.dtype == torch.float32)
        ):
            # As they are: oneDNN picks the memory format from the inputs' strides as ATen's own
            # call does (a channels-last input stays channels-last), so a routed call makes the
            # bytes ATen makes with 2 threads; forcing NCHW copied the input and cost ~40%.
            return torch.mkldnn_convolution(
                input,
                weight,
                bias,
                list(_pair(padding)),
                list(_pair(stride)),
                list(_pair(dilation)),
                groups,
            )
        return original(input, weight, bias, stride, padding, dilation, groups)

    conv2d.__wrapped__ = original  # type: ignore[attr-defined]
    return conv2d


@contextlib.contextmanager
def thread_invariant_convolutions(device: str) -> Iterator[None]:
    """Within this block (process-wide), CPU float32 inference convolutions use oneDNN."""
    global _depth, _original
    if not _wanted(device):
        yield
        return
    import torch.nn.functional as F

    with _lock:
        if _depth == 0:
            _original = F.conv2d
            F.conv2d = _make_conv2d(_original)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                F.conv2d = _original
                _original = None
