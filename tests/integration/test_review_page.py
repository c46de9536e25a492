"""The review page in a real headless Chromium (Debian's ``chromium``, driven by playwright):
keyboard accept, reject and undo land in the catalog's review table as durable rows, survive a
restart of the server, `status` counts them and an export leaves the rejected images out."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from review_support import applied_copy
    from tiny_stage_models import *  # noqa: F403
except ImportError:  # pragma: no cover - run from the repository root
    from tests.integration.review_support import applied_copy
    from tests.integration.tiny_stage_models import *  # noqa: F403

from diffspec.catalog.verdicts import REVIEW_TABLE, decision_histories, verdicts
from diffspec.project import Project

pytest.importorskip("torch")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra (pip install -e .[dev])")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed here: scripts/setup.sh installs it (apt)"
)


@pytest.fixture
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        # --no-sandbox: CI and this machine run the tests as root, where Chromium's sandbox cannot start.
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def _open(browser: object, url: str) -> object:
    page = browser.new_page(viewport={"width": 1100, "height": 760})  # type: ignore[attr-defined]
    page.goto(url)
    page.wait_for_function("document.getElementById('status').textContent.includes('ready')")
    return page


def _settled(page: object, answered: int) -> None:
    """The server has answered ``answered`` decisions of this page (saved, or an error) and none is waiting."""
    page.wait_for_function(  # type: ignore[attr-defined]
        f"(s => s.dataset.pending === '0' && s.dataset.answered === '{answered}')(document.getElementById('status'))"
    )


def _strip(page: object, what: str = "state") -> list[tuple[str, str]]:
    items = page.eval_on_selector_all(  # type: ignore[attr-defined]
        "#strip .item", f"items => items.map(i => [i.dataset.fp, i.dataset.{what}])"
    )
    return [(fp, value) for fp, value in items]


def _screenshot(page: object, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)  # type: ignore[attr-defined]
    assert shot.stat().st_size > 5000  # a picture of the page, not an empty file
    folder = os.environ.get("DIFFSPEC_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(folder) / name)
    return shot


def test_keyboard_decisions_are_durable_survive_a_restart_and_steer_status_and_export(
    tmp_path: Path,
    browser: object,
    tiny_dino: Path,  # noqa: F811
    tiny_sam: Path,  # noqa: F811
) -> None:
    spec = applied_copy(tmp_path, tiny_dino, tiny_sam)
    project = Project(spec)
    with project.review() as server:
        page = _open(browser, server.url)
        first = _strip(page)
        assert [state for _, state in first] and len(first) == 3  # class zero, all images
        zero = [fp for fp, _ in first]
        # The details panel shows the unit's provenance and the classifier's score.
        facts = page.inner_text("#facts")
        assert "a thin handwritten zero" in facts and "builtin:digits" in facts
        assert "classifier" in page.inner_text("#scores")

        page.keyboard.press("a")  # accept the first image, go to the second
        page.keyboard.press("r")  # reject the second, go to the third
        _settled(page, 2)
        assert _strip(page)[:2] == [(zero[0], "accepted"), (zero[1], "rejected")]
        assert [by for _, by in _strip(page, "by")[:2]] == ["review", "review"]
        page.keyboard.press("u")  # nothing decided on the third: undo the last decision (the second)
        _settled(page, 3)
        assert _strip(page, "by")[1] == (zero[1], "")  # back to no decision (a filter may still reject it)
        assert page.evaluate("document.querySelector('#strip .item.current').dataset.fp") == zero[1]
        page.keyboard.press("r")  # reject it again
        _settled(page, 4)
        assert "saved: reject" in page.inner_text("#status")

        page.keyboard.press("ArrowLeft")
        page.keyboard.press("ArrowLeft")
        page.wait_for_function(f"document.querySelector('#strip .item.current').dataset.fp === '{zero[0]}'")
        page.wait_for_selector("#verdict.accepted")
        if page.evaluate("document.getElementById('mask-info').textContent") != "none":
            page.wait_for_selector("#masks:not([hidden])")  # drawn over the image by default
        _screenshot(page, tmp_path, "review-page.png")
        page.keyboard.press("m")  # masks off: the picture alone
        page.wait_for_selector("#masks[hidden]", state="attached")
        _screenshot(page, tmp_path, "review-page-no-masks.png")

        page.keyboard.press("]")  # the next class
        page.wait_for_selector("#strip[data-list='one/all']", state="attached")
        one = [fp for fp, _ in _strip(page)]
        assert set(one).isdisjoint(zero)
        page.keyboard.press("r")
        _settled(page, 5)
        page.keyboard.press("f")  # filter: rejected by a filter
        page.keyboard.press("f")  # filter: not yet reviewed
        page.wait_for_selector("#strip[data-list='one/unreviewed']", state="attached")
        assert len(_strip(page)) == 2
        assert one[0] not in [fp for fp, _ in _strip(page)]
        page.close()

    # Durable: the rows are in the catalog (read by the one verdict reader), in order.
    catalog = project.catalog
    history = decision_histories(catalog)
    assert history[zero[0]] == ["accept"]
    assert history[zero[1]] == ["reject", "clear", "reject"]
    assert history[one[0]] == ["reject"]
    assert len(catalog.parts(REVIEW_TABLE)) == 1  # the session's parts merged on stop
    states = verdicts(catalog)
    assert states[zero[0]].state == "accepted" and states[zero[1]].by == "review" and states[one[0]].rejected

    # A new server (a restart) shows the same decisions.
    with Project(spec).review() as again:
        page = _open(browser, again.url)
        assert dict(_strip(page))[zero[0]] == "accepted" and dict(_strip(page))[zero[1]] == "rejected"
        page.close()

    rows = {r.name: r for r in Project(spec).status().classes}
    assert (rows["zero"].accepted, rows["zero"].rejected) == (1, 1) and rows["one"].rejected >= 1
    exported = Project(spec).export("imagefolder", tmp_path / "export")
    files = {p.stem for p in (tmp_path / "export").rglob("*.png")}
    assert zero[0] in files and zero[1] not in files and one[0] not in files
    assert exported.counts["zero"] == 2 - sum(1 for fp in zero[2:] if states.get(fp) and states[fp].rejected)
