"""The stage runners `apply` uses: stage name to the function that runs its planned units."""

from __future__ import annotations

from diffspec.run.stage_phase import StageRunner


def stage_runners() -> dict[str, StageRunner]:
    from diffspec.stages.captions_stage import run_captions
    from diffspec.stages.filters import run_filters
    from diffspec.stages.segment_stage import run_segment

    return {"captions": run_captions, "segment": run_segment, "filters": run_filters}
