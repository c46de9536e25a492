"""CPU numerics that do not depend on how many threads a worker has.

PyTorch picks the kernel of a float32 CPU convolution by a heuristic that looks at the thread
count: a 1x1 convolution on fewer than 16 images runs on oneDNN when torch has more than one
thread and on the native kernel when it has one (ATen ``Convolution.cpp``, ``use_mkldnn``).
The two kernels round differently (~1e-6), and after 8-bit quantisation a few pixels of some
images differ by one level: one worker with two threads and two workers with one thread each
would make different bytes for the same unit.

While diffspec generates on a CPU it routes every float32 inference ``conv2d`` to oneDNN
(``torch.mkldnn_convolution``), whose results do not depend on the thread count (measured:
identical bytes with 1 and 2 threads; see docs/determinism.md). Nothing changes on a GPU, with
autograd on, or when oneDNN is unavailable or switched off. ``DIFFSPEC_CPU_CONV=native`` turns
the routing off.
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
        # From 16 images on, ATen picks oneDNN for float32 whatever the thread count (checked
        # bitwise for 1x1, 3x3 and strided kernels): the common large-batch call goes straight
        # through, which keeps this wrapper's cost off big batches (it was ~3% of the quickstart).
        if input.dim() == 4 and input.shape[0] >= 16:
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
            return torch.mkldnn_convolution(
                input.contiguous(),
                weight.contiguous(),
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
