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


PASSED_THROUGH = [
    (16, 1, 1),
    (32, 1, 1),
    (16, 3, 1),
    (2, 3, 1),
    (8, 3, 1),
    (15, 3, 2),
    (2, 3, 2),
]  # (n, kernel, stride)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN not in this torch build")
@pytest.mark.parametrize("n,k,stride", PASSED_THROUGH)
def test_the_calls_passed_through_already_run_on_onednn(n: int, k: int, stride: int) -> None:
    # The wrapper passes batches of 16+ and any batch of 2+ with a kernel other than 1x1 straight
    # through: that keeps bytes only if PyTorch's own choice there is oneDNN at any thread count.
    # If a torch release changes the heuristic, this fails and the test in numerics.py must change.
    for threads in (1, 2):
        x, w, b = _inputs(n, k)
        with torch.no_grad():
            expected = torch.mkldnn_convolution(x, w, b, [k // 2] * 2, [stride] * 2, [1, 1], 1)
        assert torch.equal(_conv(n, k, stride, threads), expected)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN not in this torch build")
@pytest.mark.parametrize("n", [1, 4])
def test_a_routed_channels_last_input_makes_what_aten_makes_with_two_threads(n: int) -> None:
    # An attention block's 1x1 output projection gets a permuted (channels-last) input: the
    # routed call must keep its layout as ATen does, not copy it to NCHW (which rounds differently).
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 8, 8, 32, generator=g).permute(0, 3, 1, 2)
    w, b = torch.randn(32, 32, 1, 1, generator=g), torch.randn(32, generator=g)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.no_grad():
            aten = F.conv2d(x, w, b)
        got = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with thread_invariant_convolutions("cpu"), torch.no_grad():
                got[threads] = F.conv2d(x, w, b)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(got[1], got[2])
    if n > 1:  # ATen's own choice for a batch at two threads is oneDNN: the same bytes
        assert torch.equal(got[2], aten)


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
