"""The catalog's tables and their Arrow schemas.

Layout under the output root::

    catalog/images/part-<run>-<seq>.parquet     one row per durable image (append-only)
    catalog/runs/part-<run>-<phase>.parquet     one row per run start and per run end
    catalog/removed/part-<run>-<seq>.parquet    tombstones written by gc / apply --prune
    catalog/stages/<stage>/part-*.parquet       per-stage outputs (captions, masks, scores)

Readers take the first row per fingerprint and drop tombstoned ones, so a crash between a
compaction's write and its clean-up never double counts.
"""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

IMAGES = pa.schema(
    [
        ("fingerprint", pa.string()),
        ("dataset", pa.string()),
        ("class_name", pa.string()),
        ("classes", pa.list_(pa.string())),
        ("label", pa.string()),
        ("unit_index", pa.int64()),
        ("seed", pa.int64()),
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("model_name", pa.string()),
        ("model_source", pa.string()),
        ("model_revision", pa.string()),
        ("family", pa.string()),
        ("dtype", pa.string()),
        ("mode", pa.string()),
        ("scheduler", pa.string()),
        ("scheduler_config", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("steps", pa.int32()),
        ("guidance", pa.float64()),
        ("strength", pa.float64()),
        ("input_image", pa.string()),
        ("input_hash", pa.string()),
        ("mask_hash", pa.string()),
        ("path", pa.string()),
        ("sha256", pa.string()),
        ("bytes", pa.int64()),
        ("run_id", pa.string()),
        ("created_at", TS),
        ("seconds", pa.float64()),
        ("batch_size", pa.int32()),
        ("device", pa.string()),
        ("canonical", pa.string()),
    ]
)

RUNS = pa.schema(
    [
        ("run_id", pa.string()),
        ("phase", pa.string()),  # started | finished | interrupted | failed
        ("dataset", pa.string()),
        ("spec_path", pa.string()),
        ("spec_hash", pa.string()),
        ("profile", pa.string()),
        ("started_at", TS),
        ("ended_at", TS),
        ("executor", pa.string()),
        ("devices", pa.string()),
        ("workers", pa.int32()),
        ("versions", pa.string()),  # JSON: package versions
        ("planned", pa.int64()),
        ("made", pa.int64()),
        ("skipped", pa.int64()),
        ("failed", pa.int64()),
        ("host", pa.string()),
        ("pid", pa.int64()),
        ("log", pa.string()),  # JSON list of what the run did about memory, retries, workers
        # JSON {model name: speed options}: the options that change no pixels (compile, channels-last,
        # exact attention backends) are recorded here, not in fingerprints; null in older parts
        ("speed", pa.string()),
    ]
)

REMOVED = pa.schema(
    [
        ("fingerprint", pa.string()),
        ("path", pa.string()),
        ("run_id", pa.string()),
        ("removed_at", TS),
    ]
)

TABLES = {"images": IMAGES, "runs": RUNS, "removed": REMOVED}
