"""The HTML quality report: an index page with per-class counts and score histograms, and pages
of thumbnails per class.

- **Counts** per class: accepted / rejected (by a person, by a filter) / unreviewed, all from
  :func:`diffspec.catalog.verdicts.verdicts` through :mod:`diffspec.stages.gallery`.
- **Histograms**: per class and filter, the filter's values in bins, passed and failed stacked,
  as inline SVG (no script, no library).
- **Pages**: ``grid_per_class`` thumbnails per page (``stages.review.grid_per_class``, default
  64), one file per class per page in ``<report stem>-pages/`` beside the index, so the index of
  10,000 images stays light and a page loads its thumbnails only.
- **Thumbnails**: small JPEGs made once into ``<output>/.diffspec-cache/thumbs/``, named by the
  image's sha256 and the thumbnail size, so a re-run (or another report of the same images)
  reuses them; the segment stage's kept masks are drawn over each thumbnail as a transparent
  PNG, cached by a hash of the masks. Each thumbnail links to the image where it is.
- **Filter outcomes** per image under its thumbnail, and prompt, seed and scores on hover.

Every file is written atomically; the pages folder holds only the report's pages, and pages an
earlier run wrote that this one did not are deleted.
"""

from __future__ import annotations

import hashlib
import html
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from diffspec.atomic import atomic_write_bytes, atomic_write_many
from diffspec.catalog.store import Catalog
from diffspec.spec.loader import LoadedSpec
from diffspec.stages.gallery import ImageFacts, Mask, image_facts, kept_masks, overlay, png_bytes

REPORT_NAME = "report.html"
CLASSIFIER_TABLE = "classifier"  # the classifier filter's own table: expected, predicted, recognised
PAGES_SUFFIX = "-pages"
CACHE_DIR = ".diffspec-cache"
THUMB_SIZE = 96  # pixels on the long side; smaller pictures keep their size (the page scales them)
HISTOGRAM_BINS = 20
DEFAULT_PAGE_SIZE = 64
_WRITE_CHUNK = 256  # thumbnails made durable together (one syncfs per chunk)


@dataclass
class ClassSummary:
    name: str
    target: int
    images: list[ImageFacts] = field(default_factory=list)
    accepted: int = 0
    rejected: int = 0  # by a person, or by a filter a person did not overrule
    rejected_by_filter: int = 0
    unreviewed: int = 0
    recognised: int = 0
    scored: int = 0

    @property
    def recognised_share(self) -> float | None:
        return self.recognised / self.scored if self.scored else None


@dataclass(frozen=True)
class ReportOutcome:
    path: Path  # the index page
    pages: tuple[Path, ...]
    thumbnails_made: int
    thumbnails_reused: int


def summarize(loaded: LoadedSpec, catalog: Catalog, facts: Sequence[ImageFacts] | None = None) -> list[ClassSummary]:
    """Per class of the spec: its live images, their verdict counts and the classifier's share."""
    by_class = {n: ClassSummary(n, c.target) for n, c in loaded.classes.items()}
    recognised = _recognised(catalog)
    for fact in image_facts(catalog) if facts is None else facts:
        summary = by_class.get(fact.class_name)
        if summary is None:
            continue  # an image of a class the spec no longer has
        summary.images.append(fact)
        state = fact.verdict.state
        summary.accepted += state == "accepted"
        summary.rejected += state == "rejected"
        summary.unreviewed += state == "unreviewed"
        summary.rejected_by_filter += state == "rejected" and fact.verdict.by == "filter"
        if fact.fingerprint in recognised:
            summary.scored += 1
            summary.recognised += recognised[fact.fingerprint]
    return list(by_class.values())


def _recognised(catalog: Catalog) -> dict[str, bool]:
    """Per image, whether the classifier stage saw the prompted class (its latest row)."""
    if CLASSIFIER_TABLE not in catalog.stages() or not catalog.parts(CLASSIFIER_TABLE):
        return {}
    table = catalog.read_table(CLASSIFIER_TABLE)
    if not {"fingerprint", "recognised"} <= set(table.column_names):
        return {}
    return {
        fp: bool(value)
        for fp, value in zip(table.column("fingerprint").to_pylist(), table.column("recognised").to_pylist())
        if value is not None
    }


def overall_recognised(summaries: list[ClassSummary]) -> float | None:
    scored = sum(s.scored for s in summaries)
    return sum(s.recognised for s in summaries) / scored if scored else None


# ---- thumbnails ---------------------------------------------------------------------------------
def _thumb_size(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, THUMB_SIZE / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _thumbnail(path: Path) -> bytes | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB_SIZE, THUMB_SIZE))
            buffer = io.BytesIO()
            im.save(buffer, format="JPEG", quality=85)
            return buffer.getvalue()
    except (OSError, ValueError):
        return None  # missing or damaged: `diffspec check` reports it; the page shows the gap


def _masks_key(masks: list[Mask], size: tuple[int, int]) -> str:
    digest = hashlib.sha256(f"{size}".encode())
    for m in masks:
        digest.update(f"{m.width}x{m.height}:{m.rle}\n".encode())
    return digest.hexdigest()[:32]


class _Thumbs:
    """Thumbnails and mask overlays under ``<output>/.diffspec-cache``, made once, reused after."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.root = output / CACHE_DIR
        self.made = 0
        self.reused = 0
        self._pending: list[tuple[Path, bytes]] = []

    def thumb(self, fact: ImageFacts) -> Path | None:
        key = fact.sha256 or fact.fingerprint
        path = self.root / "thumbs" / key[:2] / f"{key}-{THUMB_SIZE}.jpg"
        if path.is_file():
            self.reused += 1
            return path
        data = _thumbnail(self.output / fact.path)
        if data is None:
            return None
        self._add(path, data)
        self.made += 1
        return path

    def masks(self, fact: ImageFacts, masks: list[Mask]) -> Path | None:
        width = int(fact.row.get("width") or masks[0].width)
        height = int(fact.row.get("height") or masks[0].height)
        size = _thumb_size(width, height)
        path = self.root / "masks" / f"{_masks_key(masks, size)}.png"
        if not path.is_file():
            self._add(path, png_bytes(overlay(masks, *size)))
        return path

    def _add(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._pending.append((path, data))
        if len(self._pending) >= _WRITE_CHUNK:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            atomic_write_many(self._pending)
            self._pending = []


# ---- histograms ---------------------------------------------------------------------------------
def histogram_svg(values: Sequence[tuple[float, bool | None]], title: str, bins: int = HISTOGRAM_BINS) -> str:
    """Values in ``bins`` equal bins from their min to their max; passed (green) and failed (red)
    stacked per bin. An inline SVG with the range and the counts in its tooltips."""
    numbers = [v for v, _ in values]
    lo, hi = (min(numbers), max(numbers)) if numbers else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    passed = [0] * bins
    failed = [0] * bins
    for value, ok in values:
        i = min(bins - 1, int((value - lo) / (hi - lo) * bins))
        (failed if ok is False else passed)[i] += 1
    top = max((p + f for p, f in zip(passed, failed)), default=0) or 1
    width, height, bar = 240, 56, 240 / bins
    out = [
        f"<svg class='hist' width='{width}' height='{height + 14}' viewBox='0 0 {width} {height + 14}' role='img'>"
        f"<title>{html.escape(title)}</title>"
    ]
    for i, (p, f) in enumerate(zip(passed, failed)):
        left, right = lo + (hi - lo) * i / bins, lo + (hi - lo) * (i + 1) / bins
        tip = f"{left:.3g} to {right:.3g}: {p} passed, {f} failed"
        x = i * bar
        hp, hf = height * p / top, height * f / top
        out.append(f"<g><title>{html.escape(tip)}</title>")
        if p:
            out.append(
                f"<rect class='pass' x='{x:.1f}' y='{height - hp:.1f}' width='{bar - 1:.1f}' height='{hp:.1f}'/>"
            )
        if f:
            y = height - hp - hf
            out.append(f"<rect class='fail' x='{x:.1f}' y='{y:.1f}' width='{bar - 1:.1f}' height='{hf:.1f}'/>")
        out.append("</g>")
    out.append(f"<text x='0' y='{height + 12}'>{lo:.3g}</text>")
    out.append(f"<text x='{width}' y='{height + 12}' text-anchor='end'>{hi:.3g}</text>")
    out.append("</svg>")
    return "".join(out)


def class_histograms(summary: ClassSummary) -> dict[str, str]:
    values: dict[str, list[tuple[float, bool | None]]] = {}
    for fact in summary.images:
        for score in fact.scores:
            if score.value is not None:
                values.setdefault(score.name, []).append((score.value, score.passed))
    return {name: histogram_svg(v, f"{summary.name}: {name} ({len(v)} images)") for name, v in sorted(values.items())}


# ---- pages --------------------------------------------------------------------------------------
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse}td,th{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:6px}
.grid figure{margin:0;width:100px;font-size:.7em;text-align:center}
.grid .pic{display:block;position:relative;width:96px;height:96px;border:2px solid #fff;background:#eee}
.grid .pic img{position:absolute;inset:0;width:100%;height:100%;object-fit:contain;image-rendering:pixelated}
.grid .accepted .pic{border-color:#2a2}.grid .rejected .pic{border-color:#d33}
.grid .rejected .pic img:first-child{opacity:.55}
.grid figcaption{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.hists{display:flex;flex-wrap:wrap;gap:1.5em}.hists figure{margin:0}
.hist .pass{fill:#5a5}.hist .fail{fill:#d55}.hist text{font-size:10px;fill:#666}
.muted{color:#777}nav{margin:.5em 0}nav a,nav b{margin-right:.5em}
"""


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def _page_name(index: int, name: str, page: int) -> str:
    return f"{index:03d}-{_slug(name)}-{page + 1:04d}.html"


def _head(title: str) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
    )


def _counts_cells(s: ClassSummary) -> str:
    rec = f"{s.recognised_share:.0%}" if s.recognised_share is not None else "-"
    return (
        f"<td>{s.target}</td><td>{len(s.images)}</td><td>{s.accepted}</td><td>{s.rejected}</td>"
        f"<td>{s.rejected_by_filter}</td><td>{s.unreviewed}</td><td>{rec}</td>"
    )


_COUNTS_HEAD = (
    "<tr><th>class</th><th>target</th><th>images</th><th>accepted</th><th>rejected</th>"
    "<th>of which by a filter</th><th>unreviewed</th><th>recognised</th></tr>"
)


def _figure(fact: ImageFacts, image_href: str, thumb: str | None, masks: str | None) -> str:
    verdict = fact.verdict
    tip = [str(fact.row.get("prompt") or ""), f"seed {fact.row.get('seed')}", fact.fingerprint[:12]]
    tip += [
        f"{s.name}: {'' if s.value is None else f'{s.value:.3g} '}{'passed' if s.passed else 'failed' if s.passed is False else ''}"
        for s in fact.scores
    ]
    if verdict.by == "review":
        outcome = f"{verdict.state} by a person"
    elif verdict.failed_filters:
        outcome = "failed " + ", ".join(verdict.failed_filters)
    else:
        outcome = "passed" if fact.scores else "unreviewed"
    tip.append(outcome)
    pic = f"<img src='{html.escape(thumb)}' loading='lazy' alt=''>" if thumb else "<span class='muted'>missing</span>"
    if masks:
        pic += f"<img src='{html.escape(masks)}' loading='lazy' alt='masks'>"
    return (
        f"<figure class='{verdict.state}' title='{html.escape(chr(10).join(tip))}'>"
        f"<a class='pic' href='{html.escape(image_href)}'>{pic}</a>"
        f"<figcaption>{html.escape(outcome)}</figcaption></figure>"
    )


def _rel(target: Path, start: Path) -> str:
    return os.path.relpath(target, start).replace(os.sep, "/")


def build_report(loaded: LoadedSpec, catalog: Catalog, out: Path | None = None) -> ReportOutcome:
    target = (out or loaded.output / REPORT_NAME).resolve()
    pages_dir = target.parent / f"{target.stem}{PAGES_SUFFIX}"
    output = loaded.output.resolve()
    facts = image_facts(catalog)
    summaries = summarize(loaded, catalog, facts)
    masks = kept_masks(catalog)
    review = loaded.spec.stages.review
    per_page = review.grid_per_class if review else DEFAULT_PAGE_SIZE
    thumbs = _Thumbs(output)
    images_prefix = _rel(output, pages_dir)
    spec = loaded.spec
    title = f"diffspec report: {spec.dataset}"

    pages: dict[Path, bytes] = {}
    links: dict[str, list[str]] = {}
    for ci, s in enumerate(summaries):
        count = max(1, -(-len(s.images) // per_page))
        names = [_page_name(ci, s.name, p) for p in range(count)]
        links[s.name] = names
        for p, name in enumerate(names):
            chunk = s.images[p * per_page : (p + 1) * per_page]
            nav = [f"<a href='../{html.escape(target.name)}'>index</a>"]
            nav += [
                f"<b>{i + 1}</b>" if i == p else f"<a href='{html.escape(n)}'>{i + 1}</a>" for i, n in enumerate(names)
            ]
            body = [
                _head(f"{title}: {s.name} ({p + 1}/{count})"),
                f"<h1>{html.escape(s.name)} <span class='muted'>page {p + 1} of {count}</span></h1>",
                f"<nav>{''.join(nav)}</nav>",
                f"<table>{_COUNTS_HEAD}<tr><td>{html.escape(s.name)}</td>{_counts_cells(s)}</tr></table>",
                "<div class='grid'>",
            ]
            for fact in chunk:
                thumb = thumbs.thumb(fact)
                overlay_path = thumbs.masks(fact, masks[fact.fingerprint]) if fact.fingerprint in masks else None
                body.append(
                    _figure(
                        fact,
                        f"{images_prefix}/{fact.path}",
                        _rel(thumb, pages_dir) if thumb else None,
                        _rel(overlay_path, pages_dir) if overlay_path else None,
                    )
                )
            if not chunk:
                body.append("<p class='muted'>no images yet</p>")
            body.append("</div></body></html>")
            pages[pages_dir / name] = "\n".join(body).encode("utf-8")
    thumbs.flush()

    index = [_head(title), f"<h1>{html.escape(title)}</h1>"]
    if spec.description:
        index.append(f"<p>{html.escape(spec.description)}</p>")
    total = sum(len(s.images) for s in summaries)
    share = overall_recognised(summaries)
    index.append(
        f"<p>{total} images in {len(summaries)} classes"
        + (f"; recognised as the prompted class: <b>{share:.1%}</b>" if share is not None else "")
        + f"; {per_page} per page</p>"
    )
    index.append(f"<table>{_COUNTS_HEAD}")
    for s in summaries:
        index.append(f"<tr><td><a href='#c-{_slug(s.name)}'>{html.escape(s.name)}</a></td>{_counts_cells(s)}</tr>")
    index.append("</table>")
    for s in summaries:
        pager = "".join(
            f"<a href='{html.escape(pages_dir.name)}/{html.escape(n)}'>{i + 1}</a>" for i, n in enumerate(links[s.name])
        )
        index.append(
            f"<h2 id='c-{_slug(s.name)}'>{html.escape(s.name)} <span class='muted'>({len(s.images)} images)</span></h2>"
        )
        hists = class_histograms(s)
        if hists:
            index.append(
                "<div class='hists'>"
                + "".join(
                    f"<figure>{svg}<figcaption>{html.escape(n)}</figcaption></figure>" for n, svg in hists.items()
                )
                + "</div>"
            )
        index.append(f"<nav>pages: {pager}</nav>")
    index.append("</body></html>")

    pages_dir.mkdir(parents=True, exist_ok=True)
    items = list(pages.items())
    for start in range(0, len(items), _WRITE_CHUNK):
        atomic_write_many(items[start : start + _WRITE_CHUNK])
    for stale in pages_dir.glob("*.html"):
        if stale not in pages:
            stale.unlink(missing_ok=True)  # a page of an earlier run with more images
    # The index last: it never links to a page that is not written yet.
    atomic_write_bytes(target, "\n".join(index).encode("utf-8"))
    return ReportOutcome(target, tuple(pages), thumbs.made, thumbs.reused)


def write_report(loaded: LoadedSpec, catalog: Catalog, out: Path | None = None) -> Path:
    return build_report(loaded, catalog, out).path
