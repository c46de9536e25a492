"""CPU convolutions give the same bytes whatever the thread count (diffspec/run/numerics.py)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from diffspec.run.numerics import thread_invariant_convolutions  # noqa: E402

SHAPES = [(1, 1), (3, 1), (3, 2)]  # (kernel, stride)


def _inputs(n: int, k: int) -> tuple:
    g = torch.Generator().manual_seed(n * 10 + k)
    return torch.randn(n, 32, 12, 12, generator=g), torch.randn(48, 32, k, k, generator=g), torch.randn(48, generator=g)


def _conv(n: int, k: int, stride: int, threads: int) -> torch.Tensor:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, w, b = _inputs(n, k)
        with torch.no_grad():
            return F.conv2d(x, w, b, stride=stride, padding=k // 2)
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN not in this torch build")
@pytest.mark.parametrize("k,stride", SHAPES)
def test_large_batches_already_run_on_onednn(k: int, stride: int) -> None:
    # The wrapper passes batches of 16+ straight through: that keeps bytes only if PyTorch's own
    # choice there is oneDNN at any thread count. If a torch release changes the heuristic,
    # this fails and the threshold in numerics.py must go.
    for threads in (1, 2):
        x, w, b = _inputs(16, k)
        with torch.no_grad():
            expected = torch.mkldnn_convolution(x, w, b, [k // 2] * 2, [stride] * 2, [1, 1], 1)
        assert torch.equal(_conv(16, k, stride, threads), expected)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN not in this torch build")
@pytest.mark.parametrize("n", [1, 2, 8, 15, 16, 32])
@pytest.mark.parametrize("k,stride", SHAPES)
def test_routed_convolutions_do_not_depend_on_threads(n: int, k: int, stride: int) -> None:
    with thread_invariant_convolutions("cpu"):
        one, two = _conv(n, k, stride, 1), _conv(n, k, stride, 2)
    assert torch.equal(one, two)
    x, w, b = _inputs(n, k)
    with torch.no_grad():
        expected = torch.mkldnn_convolution(x, w, b, [k // 2] * 2, [stride] * 2, [1, 1], 1)
    assert torch.equal(two, expected)  # every batch size runs on oneDNN inside the block


def test_routing_is_undone_after_the_block() -> None:
    original = F.conv2d
    with thread_invariant_convolutions("cpu"):
        pass
    assert F.conv2d is original
