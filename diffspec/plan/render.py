"""Render a plan as a rich table, JSON (stable key order) or Markdown (for CI step summaries)."""

from __future__ import annotations

import json
from typing import Any

from diffspec.plan.diff import ClassPlan, Plan


def format_duration(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 1 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def _class_dict(c: ClassPlan) -> dict[str, Any]:
    return {
        "class": c.name,
        "label": c.label,
        "model": c.model,
        "family": c.family,
        "mode": c.mode,
        "size": list(c.size),
        "steps": c.steps,
        "target": c.target,
        "existing": c.existing,
        "fill_to": c.fill_to,
        "variants": c.variants,
        "create": c.create,
        "keep": c.keep,
        "remove": c.remove,
        "shared": c.shared,
        "estimated_seconds": round(c.est_seconds, 1),
        "estimate_source": c.estimate_source,
        **({"pending": c.pending} if c.pending else {}),
        # only when there is something to say, so plans without rejections read as before
        **({"rejected": c.rejected, "short": c.short} if c.rejected else {}),
        **({"replace_rejected": {"rejected": c.rejected, "added": c.replaced}} if c.replace_rejected else {}),
        "memory": {
            "device": c.memory.device,
            "budget_gb": round(c.memory.budget_gb, 2),
            "weights_gb": round(c.memory.weights_gb, 3),
            "strategy": c.memory.strategy,
            "batch_size": c.memory.batch_size,
            "fits": c.memory.fits,
            "parameters_from": c.memory.source,
        },
    }


def plan_to_dict(plan: Plan, with_timestamp: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "dataset": plan.dataset,
        "spec": plan.spec_path,
        "profile": plan.profile,
        "changes": plan.has_changes,
        "totals": {
            "create": plan.total_create,
            "keep": plan.total_keep,
            "remove": plan.total_remove,
            "estimated_seconds": round(plan.total_seconds, 1),
        },
        "classes": [_class_dict(c) for c in plan.classes],
        "execution": plan.execution.to_dict(),
    }
    if plan.stages:  # only when the spec has stages, so plans without them read as before
        out["stages"] = [stage.to_dict() for stage in plan.stages]
    if with_timestamp:
        out["created_at"] = plan.created_at
    return out


def render_json(plan: Plan) -> str:
    return json.dumps(plan_to_dict(plan), indent=2, ensure_ascii=False)


def replace_note(c: ClassPlan) -> str:
    """What the plan does about the class's rejected images."""
    if c.replaced:
        return f" (+{c.replaced} to replace {c.rejected} rejected)"
    if c.rejected and c.short:
        return f" ({c.short} short: {c.rejected} rejected, replace_rejected is off)"
    return ""


def _rows(plan: Plan) -> list[list[str]]:
    rows = []
    for c in plan.classes:
        rows.append(
            [
                c.name,
                c.model,
                f"{c.size[0]}x{c.size[1]}" if c.size[0] else "-",
                str(c.steps) if c.steps else "-",
                str(c.target) + (f" (fill to {c.fill_to}, {c.existing} exist)" if c.fill_to is not None else ""),
                (f"+{c.create}" if c.create else "0")
                + (f" ({c.pending} pending)" if c.pending else "")
                + replace_note(c),
                str(c.keep),
                f"-{c.remove}" if c.remove else "0",
                format_duration(c.est_seconds),
                c.memory.describe() if c.model != "-" else "-",
            ]
        )
    return rows


HEADERS = ["class", "model", "size", "steps", "target", "create", "keep", "remove", "est. time", "memory"]


STAGE_HEADERS = ["stage", "class", "create", "keep", "after images", "est. time"]


def _stage_rows(plan: Plan) -> list[list[str]]:
    return [
        [
            c.stage,
            c.class_name,
            f"+{c.create}" if c.create else "0",
            str(c.keep),
            str(c.after_images),
            format_duration(c.est_seconds),
        ]
        for stage in plan.stages
        for c in stage.classes
    ]


def stage_lines(plan: Plan) -> list[str]:
    """One line per stage: its models and what it will make."""
    lines = []
    for stage in plan.stages:
        line = f"Stage {stage.stage}: {stage.total_create} to create, {stage.total_keep} to keep ({stage.describe()})"
        if stage.superseded:
            line += f"; {stage.superseded} earlier results no longer match the spec and are not read"
        lines.append(line + ".")
    return lines


def summary_line(plan: Plan) -> str:
    if not plan.has_changes:
        return f"No changes: {plan.total_keep} images are up to date."
    replaced = sum(c.replaced for c in plan.classes)
    create = f"{plan.total_create} to create" + (f" ({replaced} replacing rejected images)" if replaced else "")
    parts = [create, f"{plan.total_keep} to keep", f"{plan.total_remove} to remove"]
    if plan.stages:
        parts.append(f"{plan.total_stage_create} stage units to run")
    if plan.pending_images:
        parts.append(f"{plan.pending_images} images pending on captions")
    seconds = plan.total_seconds + sum(stage.total_seconds for stage in plan.stages)
    line = "Plan: " + ", ".join(parts) + f"; estimated {format_duration(seconds)}."
    if plan.total_remove:
        line += " Removal needs `apply --prune` or `gc`: nothing is deleted otherwise."
    return line


def execution_line(plan: Plan) -> str:
    return f"Runs with: {plan.execution.describe()}; planned on {plan.execution.planned_on}."


def render_markdown(plan: Plan) -> str:
    title = f"### diffspec plan: {plan.dataset}" + (f" (profile `{plan.profile}`)" if plan.profile else "")
    lines = [title, "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in _rows(plan):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    if plan.stages:
        lines += ["", "| " + " | ".join(STAGE_HEADERS) + " |", "|" + "---|" * len(STAGE_HEADERS)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in _stage_rows(plan)]
        lines += ["", *stage_lines(plan)]
    lines += ["", summary_line(plan), "", execution_line(plan), ""]
    return "\n".join(lines)


def render_table(plan: Plan, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    # Names come from the spec: escape them, or rich would read "[x]" in a model name as markup.
    title = escape(f"diffspec plan: {plan.dataset}" + (f" (profile {plan.profile})" if plan.profile else ""))
    table = Table(title=title, title_justify="left")
    for header in HEADERS:
        table.add_column(
            header, justify="right" if header in ("steps", "create", "keep", "remove", "est. time") else "left"
        )
    for row, c in zip(_rows(plan), plan.classes):
        style = "green" if c.create else ("red" if c.remove else None)
        table.add_row(*(escape(cell) for cell in row), style=style)
    console.print(table)
    if plan.stages:
        stages = Table(title="stages", title_justify="left")
        for header in STAGE_HEADERS:
            stages.add_column(header, justify="left" if header in ("stage", "class") else "right")
        for row in _stage_rows(plan):
            stages.add_row(*(escape(cell) for cell in row), style="green" if row[2] != "0" else None)
        console.print(stages)
        for line in stage_lines(plan):
            console.print(line, highlight=False, markup=False)
    console.print(summary_line(plan))
    console.print(execution_line(plan), highlight=False, markup=False)
    unfit = [c.name for c in plan.classes if not c.memory.fits and c.model != "-"]
    if unfit:
        console.print(f"[yellow]warning:[/] the memory budget is too small for: {escape(', '.join(unfit))}")
