"""Sensors, and the jobs they request.

- `incoming_data` (sensor, on by default): hashes the files in the incoming folder, requests one ingestion run per
  new content, and, once a batch is stored, one scoring run per new shard. Nothing already scored is re-scored.
- Jobs for the two kinds of runs the sensor requests (the `rescore_new_source_rows` schedule of automation.py
  requests ingestion runs too).

Settings (docs/settings.md): `NUGGETS_INCOMING_DIR` and `NUGGETS_INCOMING_SETTLE_S` are read at each tick,
`NUGGETS_SENSOR_INTERVAL_S` when the definitions are built. How runs execute is execution.py; what runs on a clock,
automation.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from nuggets_pipeline.core.incoming import (
    INCREMENTS_TABLE,
    batch_key,
    file_digest,
    incoming_dir,
    refused_files,
    waiting_files,
)
from nuggets_pipeline.core.settings import Settings, get_settings
from nuggets_pipeline.partitions import CANDIDATE_SHARDS, INCOMING_FILES, candidate_shards, incoming_files

INGEST_JOB = "ingest_increments"
SCORE_JOB = "score_shards"
INCREMENT_OP = "ingest_increment_file"
ONE_SHOT = dg.AssetKey("one_shot_scores")


ingest_increments_job = dg.define_asset_job(
    INGEST_JOB,
    selection=dg.AssetSelection.assets(INCREMENTS_TABLE, "quarantined_increments"),
    partitions_def=incoming_files,
    description="Ingest one incoming file (partition = content hash) into new candidate shards.",
)
score_shards_job = dg.define_asset_job(
    SCORE_JOB,
    selection=dg.AssetSelection.assets(ONE_SHOT),
    partitions_def=candidate_shards,
    description="Score one candidate shard (the sensor requests one run per new shard).",
)


@dataclass
class SensorState:
    """The cursor: what each file hashed to (so unchanged files are not re-read) and the last batch handled."""

    files: dict[str, list[Any]] = field(default_factory=dict)  # name -> [size, mtime_ns, batch]
    last_increment_event: int = 0
    refused: list[str] = field(default_factory=list)  # names already reported as refused (links, FIFOs...)

    @classmethod
    def parse(cls, cursor: str | None) -> SensorState:
        if not cursor:
            return cls()
        raw = json.loads(cursor)
        return cls(
            files=raw.get("files", {}),
            last_increment_event=int(raw.get("last_increment_event", 0)),
            refused=list(raw.get("refused", [])),
        )

    def dump(self) -> str:
        state = {"files": self.files, "last_increment_event": self.last_increment_event, "refused": self.refused}
        return json.dumps(state, sort_keys=True)


def _new_files(context: dg.SensorEvaluationContext, state: SensorState) -> tuple[list[dg.RunRequest], list[str]]:
    folder = incoming_dir()
    settle = get_settings().incoming_settle_s  # read at each tick: a changed setting applies at the next one
    seen = set(context.instance.get_dynamic_partitions(INCOMING_FILES))
    requests: list[dg.RunRequest] = []
    added: list[str] = []
    present: dict[str, list[Any]] = {}
    refused = refused_files(folder)
    for name, reason in refused.items():
        if name not in state.refused:
            context.log.warning(f"incoming file not read: {reason}")  # once per name, not every tick
    state.refused = sorted(refused)
    for path in waiting_files(folder):
        stat = path.stat()
        if time.time() - stat.st_mtime < settle:
            continue  # possibly still being written: next tick
        cached = state.files.get(path.name)
        unchanged = cached is not None and cached[:2] == [stat.st_size, stat.st_mtime_ns]
        batch = cached[2] if unchanged else batch_key(file_digest(path))
        present[path.name] = [stat.st_size, stat.st_mtime_ns, batch]
        if batch in seen or batch in added:
            continue  # this content was ingested (or requested) before, under this name or another
        added.append(batch)
        requests.append(
            dg.RunRequest(
                run_key=f"ingest-{batch}",
                job_name=INGEST_JOB,
                partition_key=batch,
                run_config={"ops": {INCREMENT_OP: {"config": {"path": str(path)}}}},
                tags={"nuggets/incoming_file": path.name},
            )
        )
    state.files = present
    return requests, added


def _new_shards(context: dg.SensorEvaluationContext, state: SensorState) -> list[dg.RunRequest]:
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(INCREMENTS_TABLE), after_storage_id=state.last_increment_event),
        limit=200,
        ascending=True,
    ).records
    if not records:
        return []
    scored = context.instance.get_materialized_partitions(ONE_SHOT)
    registered = set(context.instance.get_dynamic_partitions(CANDIDATE_SHARDS))
    requests = []
    for record in records:
        materialization = record.asset_materialization
        entry = materialization.metadata.get("new_shards") if materialization else None
        shards = json.loads(entry.value) if entry is not None else []
        for shard in shards:
            # A re-materialised batch lists shards that are scored already: those scores stay as they are.
            if shard in scored or shard not in registered:
                continue
            requests.append(
                dg.RunRequest(
                    run_key=f"score-{shard}-{record.storage_id}",
                    job_name=SCORE_JOB,
                    partition_key=shard,
                    tags={"nuggets/batch": materialization.partition or ""},
                )
            )
        state.last_increment_event = record.storage_id
    return requests


def _incoming_data(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    state = SensorState.parse(context.cursor)
    ingest_requests, batches = _new_files(context, state)
    score_requests = _new_shards(context, state)
    partitions = [dg.AddDynamicPartitionsRequest(INCOMING_FILES, batches)] if batches else []
    return dg.SensorResult(
        run_requests=[*ingest_requests, *score_requests],
        dynamic_partitions_requests=partitions,
        cursor=state.dump(),
    )


def incoming_data_sensor(settings: Settings) -> dg.SensorDefinition:
    return dg.sensor(
        name="incoming_data",
        jobs=[ingest_increments_job, score_shards_job],
        minimum_interval_seconds=int(settings.sensor_interval_s),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="New files in the incoming folder -> ingestion runs -> scoring runs for their new shards only.",
    )(_incoming_data)


def sensors(settings: Settings) -> list[dg.SensorDefinition]:
    return [incoming_data_sensor(settings)]


JOBS = [ingest_increments_job, score_shards_job]
