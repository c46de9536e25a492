"""Run the captions stage's planned units inside `apply`: captions recorded batch by batch.

One :class:`~diffspec.stages.captions.CaptionGenerator` is loaded for the run; units go in the
plan's order, ``batch_size`` captions per ``generate`` call, each batch one atomic Parquet part
of the ``captions`` table before the next starts. A class whose prompts use ``{caption}`` gets
its image units from these texts at the next plan, which ``Project.apply`` makes right after
this run (docs/stages.md).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pyarrow as pa

from diffspec.catalog.columns import table_from_rows
from diffspec.catalog.store import Catalog, utcnow
from diffspec.errors import StageError
from diffspec.plan.caption_identity import CaptionRequest, text_fingerprint
from diffspec.plan.stages import CAPTIONS_STAGE, CaptionsPlan, recorded_captions
from diffspec.run.events import RunEvent, event
from diffspec.run.stage_phase import StageContext, StageOutcome

CAPTIONS_SCHEMA = pa.schema(
    [
        ("caption_fingerprint", pa.string()),  # the unit (not an image: no `fingerprint` column)
        ("class_name", pa.string()),
        ("source_text", pa.string()),
        ("variation", pa.int32()),
        ("text", pa.string()),  # the caption, cleaned to one line
        ("raw_text", pa.string()),  # what the model wrote
        ("seed", pa.int64()),
        ("model", pa.string()),
        ("model_revision", pa.string()),
        ("params", pa.string()),  # JSON: instruction, temperature, top_p, top_k, max_new_tokens, base seed
        ("chat_template", pa.bool_()),
        ("new_tokens", pa.int32()),
        ("device", pa.string()),
        ("batch_size", pa.int32()),
        ("seconds", pa.float64()),
        ("run_id", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)


def run_captions(stage: CaptionsPlan, context: StageContext, generator: Any = None) -> StageOutcome:
    """Make ``stage.create``; ``generator`` replaces the loaded CaptionGenerator (tests)."""
    t0 = time.perf_counter()
    catalog: Catalog = context.catalog
    done = recorded_captions(catalog)
    todo = [u for u in stage.create if u.fingerprint not in done]  # recorded since the plan: kept
    events: list[RunEvent] = []
    if todo and generator is None:
        from diffspec.stages.captions import CaptionGenerator

        context.note(f"captions: loading {stage.model.source}")
        generator = CaptionGenerator(stage.model, context.device)
    params_json = json.dumps({**stage.params.identity(), "base_seed": stage.params.base_seed}, sort_keys=True)
    made = failed = 0
    interrupted = False
    for start in range(0, len(todo), stage.batch_size):
        if context.stop.is_set():
            interrupted = True
            break
        batch = todo[start : start + stage.batch_size]
        requests = [CaptionRequest(u.source_text, u.variation, u.seed, text_fingerprint(u.source_text)) for u in batch]
        try:
            captions = generator.generate(requests, stage.params, batch_size=stage.batch_size)
        except (StageError, ValueError, RuntimeError) as exc:
            failed += len(batch)
            events.append(
                event("stage_batch_failed", f"captions: a batch of {len(batch)} failed: {type(exc).__name__}: {exc}")
            )
            continue
        now = utcnow()
        rows = []
        for unit, caption in zip(batch, captions):
            if caption.fingerprint != unit.fingerprint:  # the plan and the library must agree on identity
                raise StageError(f"captions: unit {unit.fingerprint[:12]} came back as {caption.fingerprint[:12]}")
            rows.append(
                {
                    "caption_fingerprint": unit.fingerprint,
                    "class_name": unit.class_name,
                    "source_text": unit.source_text,
                    "variation": unit.variation,
                    "text": caption.text,
                    "raw_text": caption.raw_text,
                    "seed": unit.seed,
                    "model": stage.model.source,
                    "model_revision": stage.model.revision,
                    "params": params_json,
                    "chat_template": caption.chat_template,
                    "new_tokens": caption.new_tokens,
                    "device": context.device,
                    "batch_size": stage.batch_size,
                    "seconds": float(caption.seconds),
                    "run_id": context.run_id,
                    "created_at": now,
                }
            )
        catalog.append_stage(CAPTIONS_STAGE, table_from_rows(rows, CAPTIONS_SCHEMA), context.run_id)
        made += len(batch)
    try:
        catalog.compact(CAPTIONS_STAGE, context.run_id)
    except OSError:
        pass  # an optimisation: many small parts read the same
    return StageOutcome(CAPTIONS_STAGE, made, failed, 0, time.perf_counter() - t0, interrupted, tuple(events))
