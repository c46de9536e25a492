"""Shared fixtures: a scratch copy of the shipped specs, and catalog rows for planned units."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
# Content hashes of local files are cached in the user's cache folder (diffspec/content.py): the
# tests keep theirs in a scratch folder of their own, never in the home of whoever runs them.
os.environ["DIFFSPEC_CACHE_DIR"] = tempfile.mkdtemp(prefix="diffspec-test-cache-")


@pytest.fixture
def specs_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """specs/ (with its assets and data) copied under tmp_path, and cwd = tmp_path.

    The shipped specs write to `../data/...`, so their outputs land in tmp_path/data: empty, and
    never the repository's own data folder. Refer to specs as `specs/<name>.yaml` (relative) so
    no machine path reaches a snapshot.
    """
    shutil.copytree(REPO / "specs", tmp_path / "specs")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "specs"


@pytest.fixture
def write_catalog() -> Callable[..., None]:
    """write(output, units, dataset): record catalog rows as if `apply` had made these units."""
    from diffspec.catalog.store import Catalog
    from diffspec.run.writer import image_record

    def write(output: Path, units: Iterable[Any], dataset: str = "test", run_id: str = "test-run") -> None:
        records = [
            image_record(
                u, path=u.relpath, sha256=None, nbytes=None, run_id=run_id, dataset=dataset, label=u.class_name
            )
            for u in units
        ]
        Catalog(Path(output)).append_images(records, run_id)

    return write
