"""The HTML quality report: per class, counts, quality scores and a grid of its images.

The page links the images where they are (no copies), marks the ones a filter rejected, and
shows each image's prompt, seed and scores on hover. It is written atomically.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffspec.atomic import atomic_write_bytes
from diffspec.catalog.store import Catalog
from diffspec.catalog.verdicts import UNREVIEWED, verdicts
from diffspec.spec.loader import LoadedSpec

REPORT_NAME = "report.html"


@dataclass
class ClassSummary:
    name: str
    target: int
    images: list[dict[str, Any]] = field(default_factory=list)
    rejected: int = 0
    recognised: int = 0
    scored: int = 0

    @property
    def recognised_share(self) -> float | None:
        return self.recognised / self.scored if self.scored else None


def _stage_rows(catalog: Catalog, stage: str) -> list[dict[str, Any]]:
    return catalog.read_table(stage).to_pylist() if catalog.parts(stage) else []


def summarize(loaded: LoadedSpec, catalog: Catalog) -> list[ClassSummary]:
    """What the report and the quickstart print: per class, images, rejections and quality."""
    images = catalog.live_images(["fingerprint", "class_name", "prompt", "seed", "path", "unit_index"]).to_pylist()
    # One answer to "is it rejected?" (a person's decision over the filters' latest verdicts).
    states = verdicts(catalog)
    scores = {row["fingerprint"]: row for row in _stage_rows(catalog, "classifier")}
    by_class: dict[str, ClassSummary] = {n: ClassSummary(n, c.target) for n, c in loaded.classes.items()}
    for image in sorted(images, key=lambda r: (r["class_name"], r["unit_index"])):
        summary = by_class.get(image["class_name"])
        if summary is None:
            continue  # an image of a class the spec no longer has
        verdict = states.get(image["fingerprint"], UNREVIEWED)
        image["rejected_by"] = (
            (list(verdict.failed_filters) if verdict.by == "filter" else ["review"]) if verdict.rejected else []
        )
        image["classifier"] = scores.get(image["fingerprint"])
        summary.images.append(image)
        if image["rejected_by"]:
            summary.rejected += 1
        if image["classifier"] is not None:
            summary.scored += 1
            summary.recognised += bool(image["classifier"]["recognised"])
    return list(by_class.values())


def overall_recognised(summaries: list[ClassSummary]) -> float | None:
    scored = sum(s.scored for s in summaries)
    return sum(s.recognised for s in summaries) / scored if scored else None


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse}td,th{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:4px}
.grid figure{margin:0;position:relative}
.grid img{width:72px;height:72px;image-rendering:pixelated;border:2px solid #fff;background:#eee}
.grid .rejected img{border-color:#d33;opacity:.55}
.muted{color:#777}
"""


def render_html(loaded: LoadedSpec, summaries: list[ClassSummary], image_root: str, per_class: int) -> str:
    spec = loaded.spec
    title = f"diffspec report: {spec.dataset}"
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
    ]
    out.append(f"<h1>{html.escape(title)}</h1>")
    if spec.description:
        out.append(f"<p>{html.escape(spec.description)}</p>")
    total = sum(len(s.images) for s in summaries)
    share = overall_recognised(summaries)
    out.append(
        f"<p>{total} images in {len(summaries)} classes"
        + (f"; recognised as the prompted class: <b>{share:.1%}</b>" if share is not None else "")
        + "</p>"
    )
    out.append("<table><tr><th>class</th><th>target</th><th>images</th><th>rejected</th><th>recognised</th></tr>")
    for s in summaries:
        rec = f"{s.recognised_share:.0%}" if s.recognised_share is not None else "-"
        out.append(
            f"<tr><td><a href='#c-{html.escape(s.name)}'>{html.escape(s.name)}</a></td><td>{s.target}</td><td>{len(s.images)}</td><td>{s.rejected}</td><td>{rec}</td></tr>"
        )
    out.append("</table>")
    for s in summaries:
        out.append(
            f"<h2 id='c-{html.escape(s.name)}'>{html.escape(s.name)} <span class='muted'>({len(s.images)} images"
            + (f", {s.recognised_share:.0%} recognised" if s.recognised_share is not None else "")
            + ")</span></h2>"
        )
        out.append("<div class='grid'>")
        for image in s.images[:per_class]:
            tip = f"{image['prompt']}\nseed {image['seed']}\n{image['fingerprint'][:12]}"
            if image["classifier"] is not None:
                c = image["classifier"]
                tip += f"\nclassifier: {c['predicted']} (p={c['score']:.2f} for {c['expected']})"
            if image["rejected_by"]:
                tip += "\nrejected by: " + ", ".join(image["rejected_by"])
            src = f"{image_root}/{image['path']}" if image_root else image["path"]
            cls = " class='rejected'" if image["rejected_by"] else ""
            out.append(
                f"<figure{cls}><img src='{html.escape(src)}' title='{html.escape(tip)}' alt='{html.escape(image['prompt'])}'></figure>"
            )
        if len(s.images) > per_class:
            out.append(f"<p class='muted'>... and {len(s.images) - per_class} more</p>")
        out.append("</div>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(loaded: LoadedSpec, catalog: Catalog, out: Path | None = None) -> Path:
    target = (out or loaded.output / REPORT_NAME).resolve()
    summaries = summarize(loaded, catalog)
    image_root = os.path.relpath(loaded.output, target.parent).replace(os.sep, "/")
    image_root = "" if image_root == "." else image_root
    review = loaded.spec.stages.review
    per_class = review.grid_per_class if review else 64
    atomic_write_bytes(target, render_html(loaded, summaries, image_root, per_class).encode("utf-8"))
    return target
