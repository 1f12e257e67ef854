"""Operations: what runs without a person clicking anything, and how runs execute.

- `incoming_data` (sensor, on by default): hashes the files in the incoming folder, requests one ingestion run per
  new content, and, once a batch is stored, one scoring run per new shard. Nothing already scored is re-scored.
- `nuggets_automation` (automation condition sensor, on by default): evaluates the cron condition on
  `golden_subset`, so the selection is rebuilt at a configurable time once new scores exist.
- `rescore_new_source_rows` (schedule, on by default, `NUGGETS_RESCORE_CRON`, default 02:00 UTC): re-reads the
  local files `instructions` was last built from; a file that grew becomes an increment of its new rows only
  (the ingestion run above, `skip_known`), whose new shards `incoming_data` then sends to scoring. A tick with
  nothing new compares sizes and mtimes only and requests nothing.
- Jobs for the two kinds of runs the sensor requests, and the executor (bounded step concurrency locally, a pod
  per step on Kubernetes).

Settings, all from the environment (read when the definitions load):
  NUGGETS_INCOMING_DIR         folder watched for data files (default <home>/incoming)
  NUGGETS_INCOMING_SETTLE_S    a file must be unchanged this long before it is read (default 10)
  NUGGETS_SENSOR_INTERVAL_S    seconds between sensor ticks (default 30)
  NUGGETS_RESCORE_CRON         when the instruction sources are re-read for new rows (default "0 2 * * *")
  NUGGETS_SELECTION_CRON       when golden_subset is rebuilt after new scores (default "0 3 * * *")
  NUGGETS_SELECTION_TIMEZONE   time zone of that cron (default UTC)
  NUGGETS_EXECUTOR             multiprocess (default), in_process or k8s
  NUGGETS_MAX_CONCURRENT_STEPS steps at once in one run for the multiprocess executor (default 2)
  NUGGETS_SHARDS_PER_RUN       shards per backfill run (partitions.py)
"""

from __future__ import annotations

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
from nuggets_pipeline.partitions import CANDIDATE_SHARDS, INCOMING_FILES, candidate_shards, incoming_files

SETTLE_ENV = "NUGGETS_INCOMING_SETTLE_S"
INTERVAL_ENV = "NUGGETS_SENSOR_INTERVAL_S"
CRON_ENV = "NUGGETS_SELECTION_CRON"
TIMEZONE_ENV = "NUGGETS_SELECTION_TIMEZONE"
EXECUTOR_ENV = "NUGGETS_EXECUTOR"
MAX_STEPS_ENV = "NUGGETS_MAX_CONCURRENT_STEPS"
DEFAULT_CRON = "0 3 * * *"
RESCORE_CRON_ENV = "NUGGETS_RESCORE_CRON"
DEFAULT_RESCORE_CRON = "0 2 * * *"  # an hour before the selection's cron, so its scores are in by then
INSTRUCTIONS = dg.AssetKey("instructions")

INGEST_JOB = "ingest_increments"
SCORE_JOB = "score_shards"
INCREMENT_OP = "ingest_increment_file"
ONE_SHOT = dg.AssetKey("one_shot_scores")

# A pod with one GPU for every step that runs a model, read by dagster-k8s's k8s_job_executor (cluster profile,
# NUGGETS_EXECUTOR=k8s); ignored by the local executors. The memory request covers loading a 7B model in bf16.
MODEL_POD_TAGS: dict[str, Any] = {
    "dagster-k8s/config": {
        "container_config": {
            "resources": {
                "requests": {"nvidia.com/gpu": "1", "cpu": "4", "memory": "32Gi"},
                "limits": {"nvidia.com/gpu": "1", "memory": "48Gi"},
            }
        }
    }
}


def _env_number(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ValueError(f"{name} must be a number >= {minimum}, got {raw!r}")
    return value


def selection_condition() -> dg.AutomationCondition:
    """Rebuild the selection once per cron tick, only if some input (new scores above all) changed since the last
    build, and never while scoring runs: a tick with nothing new starts no run."""
    cron = os.environ.get(CRON_ENV, DEFAULT_CRON)
    timezone = os.environ.get(TIMEZONE_ENV, "UTC")
    return (
        dg.AutomationCondition.cron_tick_passed(cron, timezone).since_last_handled()
        & dg.AutomationCondition.any_deps_updated().since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label(f"new scores, then cron {cron} ({timezone})")


def executor() -> dg.ExecutorDefinition:
    """Steps at once in one run are bounded: the 'model' pool already keeps model steps to one per machine."""
    kind = os.environ.get(EXECUTOR_ENV, "multiprocess")
    if kind == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    if kind == "in_process":
        return dg.in_process_executor
    if kind != "multiprocess":
        raise ValueError(f"{EXECUTOR_ENV} must be multiprocess, in_process or k8s, got {kind!r}")
    steps = int(_env_number(MAX_STEPS_ENV, 2, 1))
    return dg.multiprocess_executor.configured({"max_concurrent": steps}, name="bounded_multiprocess")


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
    settle = _env_number(SETTLE_ENV, 10, 0)
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


@dg.sensor(
    name="incoming_data",
    jobs=[ingest_increments_job, score_shards_job],
    minimum_interval_seconds=int(_env_number(INTERVAL_ENV, 30, 1)),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="New files in the incoming folder -> ingestion runs -> scoring runs for their new shards only.",
)
def incoming_data_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    state = SensorState.parse(context.cursor)
    ingest_requests, batches = _new_files(context, state)
    score_requests = _new_shards(context, state)
    partitions = [dg.AddDynamicPartitionsRequest(INCOMING_FILES, batches)] if batches else []
    return dg.SensorResult(
        run_requests=[*ingest_requests, *score_requests],
        dynamic_partitions_requests=partitions,
        cursor=state.dump(),
    )


def _last_read_sources(instance: dg.DagsterInstance) -> dict[str, dict[str, Any]]:
    """The local files of the latest `instructions` build, with size, mtime and SHA-256 as they were read."""
    event = instance.get_latest_materialization_event(INSTRUCTIONS)
    materialization = event.asset_materialization if event else None
    entry = materialization.metadata.get("source_files") if materialization else None
    return json.loads(entry.value) if entry is not None else {}


@dg.schedule(
    name="rescore_new_source_rows",
    cron_schedule=os.environ.get(RESCORE_CRON_ENV, DEFAULT_RESCORE_CRON),
    execution_timezone=os.environ.get(TIMEZONE_ENV, "UTC"),
    job=ingest_increments_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Re-reads the instruction source files; the rows they gained become an increment that is scored "
    "in new shards only. Nothing new: no run.",
)
def rescore_new_source_rows(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
    sources = _last_read_sources(context.instance)
    if not sources:
        return dg.SkipReason("`instructions` has not been built from a local file yet: nothing to re-read")
    seen = set(context.instance.get_dynamic_partitions(INCOMING_FILES))
    requests, notes = [], []
    for name, recorded in sorted(sources.items()):
        path = Path(name)
        if not path.is_file():
            notes.append(f"{name}: gone")
            continue
        stat = path.stat()
        if [stat.st_size, stat.st_mtime_ns] == [recorded.get("size"), recorded.get("mtime_ns")]:
            notes.append(f"{path.name}: unchanged since instructions read it")
            continue  # the cheap path: no byte is read
        digest = file_digest(path)
        batch = batch_key(digest)
        if digest == recorded.get("sha256") or batch in seen:
            notes.append(f"{path.name}: content already ingested")
            continue
        context.instance.add_dynamic_partitions(INCOMING_FILES, [batch])
        requests.append(
            dg.RunRequest(
                run_key=f"source-{batch}",
                job_name=INGEST_JOB,
                partition_key=batch,
                run_config={"ops": {INCREMENT_OP: {"config": {"path": str(path), "skip_known": True}}}},
                tags={"nuggets/source_file": path.name},
            )
        )
    return requests or dg.SkipReason("; ".join(notes))


automation_sensor = dg.AutomationConditionSensorDefinition(
    "nuggets_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=int(_env_number(INTERVAL_ENV, 30, 1)),
    description="Evaluates the automation conditions (golden_subset's cron rebuild after new scores).",
)

JOBS = [ingest_increments_job, score_shards_job]
SENSORS = [incoming_data_sensor, automation_sensor]
SCHEDULES = [rescore_new_source_rows]
