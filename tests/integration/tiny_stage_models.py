"""Session fixtures for the stage tests: tiny causal LM, Grounding DINO, SAM and CLIP folders.

Import them with ``from tiny_stage_models import *`` (see the try/except at the top of
``test_stages_*.py``). Each folder is built once per session by ``diffspec.stages.tiny`` and then
loaded through ``from_pretrained`` like a real checkpoint. No weight is downloaded.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no weights can be downloaded here

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

__all__ = ["tiny_lm", "tiny_lm_plain", "tiny_dino", "tiny_sam", "tiny_clip", "one_thread"]


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffspec.stages.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm") / "lm")


@pytest.fixture(scope="session")
def tiny_lm_plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same LM with no chat template on its tokenizer."""
    from diffspec.stages.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm-plain") / "lm", chat_template=False)


@pytest.fixture(scope="session")
def tiny_dino(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffspec.stages.tiny import build_tiny_grounding_dino

    return build_tiny_grounding_dino(tmp_path_factory.mktemp("tiny-dino") / "dino")


@pytest.fixture(scope="session")
def tiny_sam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffspec.stages.tiny import build_tiny_sam

    return build_tiny_sam(tmp_path_factory.mktemp("tiny-sam") / "sam")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffspec.stages.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "clip")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread: tiny models gain nothing from threads on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
