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

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
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
from nuggets_pipeline.defs.partitions import CANDIDATE_SHARDS, INCOMING_FILES, candidate_shards, incoming_files

INGEST_JOB = "ingest_increments"
SCORE_JOB = "score_shards"
INCREMENT_OP = "ingest_increment_file"
ONE_SHOT = dg.AssetKey("one_shot_scores")
SCREENING = dg.AssetKey("one_shot_screening")  # adaptive mode's first pass (a no-op in exact and decision modes)
# What the sensor saw of the file it requested a batch from (name, size, mtime, ctime, inode): a failed batch is
# requested again only once its content is seen some other way, not every tick while nothing changed.
SEEN_TAG = "nuggets/incoming_seen"
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


ingest_increments_job = dg.define_asset_job(
    INGEST_JOB,
    selection=dg.AssetSelection.assets(INCREMENTS_TABLE, "quarantined_increments"),
    partitions_def=incoming_files,
    description="Ingest one incoming file (partition = content hash) into new candidate shards.",
)
score_shards_job = dg.define_asset_job(
    SCORE_JOB,
    selection=dg.AssetSelection.assets(SCREENING, ONE_SHOT),
    partitions_def=candidate_shards,
    description="Score one candidate shard (the sensor requests one run per new shard); in adaptive mode the shard "
    "is screened first, in the same run.",
)


@dataclass
class SensorState:
    """The cursor: what each file hashed to (so unchanged files are not re-read) and the last batch handled."""

    files: dict[str, list[Any]] = field(default_factory=dict)  # name -> [size, mtime_ns, batch, ctime_ns, inode]
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
    stored: set[str] | None = None  # read once, and only when a file's batch is registered already
    for path in waiting_files(folder):
        try:
            stat = path.stat()
            if time.time() - stat.st_mtime < settle:
                continue  # possibly still being written: next tick
            cached = state.files.get(path.name)
            # Hashed again unless size, mtime, ctime and inode all match the last check: bytes replaced with the
            # size and mtime kept (cp -p, touch -d) still change the ctime, which no user can set back.
            unchanged = cached is not None and cached[:2] + cached[3:5] == _identity(stat)
            batch = cached[2] if unchanged else batch_key(file_digest(path))
        except FileNotFoundError:
            continue  # removed or renamed since it was listed: its new name, if any, is listed on the next tick
        present[path.name] = [stat.st_size, stat.st_mtime_ns, batch, stat.st_ctime_ns, stat.st_ino]
        if batch in added:
            continue
        run_key = f"ingest-{batch}"
        if batch in seen:
            # Registered before: stored, in flight, or failed. Only a failed batch whose content is now seen in
            # another way (renamed, put back, touched) is requested again: the same bytes seen the same way would
            # fail the same way every tick.
            stored = stored_batches(context.instance) if stored is None else stored
            retry = _retry_key(context, batch, path, stat) if batch not in stored else None
            if retry is None:
                continue
            run_key = retry
        added.append(batch)
        requests.append(
            dg.RunRequest(
                run_key=run_key,
                job_name=INGEST_JOB,
                partition_key=batch,
                run_config={"ops": {INCREMENT_OP: {"config": {"path": str(path)}}}},
                tags={"nuggets/incoming_file": path.name, SEEN_TAG: _seen(path, stat)},
            )
        )
    state.files = present
    return requests, [b for b in added if b not in seen]


def _identity(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _seen(path: Path, stat: os.stat_result) -> str:
    return ":".join([path.name, *map(str, _identity(stat))])


def stored_batches(instance: dg.DagsterInstance) -> set[str]:
    return set(instance.get_materialized_partitions(dg.AssetKey(INCREMENTS_TABLE)))


def latest_batch_run(instance: dg.DagsterInstance, batch: str) -> dg.DagsterRun | None:
    """The newest run of an incoming batch, whoever requested it (this sensor or the re-scoring schedule)."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": batch}), limit=1)
    return runs[0] if runs else None


def _retry_key(context: dg.SensorEvaluationContext, batch: str, path: Path, stat: os.stat_result) -> str | None:
    """The run key to request a registered, never stored batch again with, or None to leave it for now: its
    latest run is still queued or running, or it failed on this very file as the sensor sees it now."""
    latest = latest_batch_run(context.instance, batch)
    seen = _seen(path, stat)
    if latest is not None and (latest.status not in FINISHED or latest.tags.get(SEEN_TAG) == seen):
        return None
    if latest is not None:
        context.log.info(f"{path.name}: requesting batch {batch} again, its last run {latest.run_id} failed")
    # A new key per sighting: the daemon runs a run key once, and the first one (ingest-<batch>) has run.
    return f"ingest-{batch}-{hashlib.sha256(seen.encode()).hexdigest()[:8]}"


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
